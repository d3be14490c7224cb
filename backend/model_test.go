//go:build linux

package backend

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

// modelSize is small enough for a fuzzer yet crosses chunk, block and page
// edges.
const modelSize = 5*chunkSize + 100

// FuzzModel decodes ops from the input, applies them to Memory and Mapped
// and to a plain byte slice, and requires that they agree: contents after
// every op, and extents never claiming zeroes where there is data.
func FuzzModel(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x10\x00\x00\x00\x00\x20\x01\x00\x00\x00\x00\x00\x02\x00\x00"))
	f.Add(bytes.Repeat([]byte("\x01\x00\x01\x00\x00\x00\x03\x00\x00\x02\x00\x00\x80\x00\x00\x01\x80\x00"), 3))
	f.Fuzz(func(t *testing.T, ops []byte) {
		m, err := NewMapped(modelSize, false)
		require.NoError(t, err)
		defer m.Close()
		for _, b := range []Backend{NewMemory(modelSize), m} {
			model := make([]byte, modelSize)
			for o := ops; len(o) >= 9; o = o[9:] {
				applyOp(t, b, model, o[0], o[1:9])
				require.True(t, bytes.Equal(model, readAll(t, b)), "contents differ from the model")
			}
			checkExtents(t, b, model)
		}
	})
}

// applyOp applies one op, chosen by kind, to b and to model. arg holds the
// offset and length, reduced into the export.
func applyOp(t *testing.T, b Backend, model []byte, kind byte, arg []byte) {
	off := int64(binary.BigEndian.Uint32(arg) % modelSize)
	n := int64(binary.BigEndian.Uint32(arg[4:])) % (modelSize - off + 1)
	var err error
	switch kind % 4 {
	case 0:
		p := bytes.Repeat([]byte{kind | 1}, int(n))
		_, err = b.WriteAt(p, off)
		copy(model[off:], p)
	case 1:
		err = b.(Trimmer).Trim(off, n)
		clear(model[off : off+n])
	case 2:
		err = b.(Zeroer).WriteZeroes(off, n, kind&4 != 0, kind&8 != 0)
		clear(model[off : off+n])
	case 3:
		err = b.(Extenter).Extents(off, n, func(e Extent) bool { return kind&4 != 0 })
	}
	require.NoError(t, err, "op %d at %d+%d", kind%4, off, n)
}
