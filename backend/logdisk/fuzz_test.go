package logdisk

import (
	"bytes"
	"testing"
)

func FuzzDecodeLogHeader(f *testing.F) {
	h := logHeader{Kind: objSegment, Seq: 7, Epoch: Epoch{2, 3}, DataLen: 8192, Extents: []logExtent{
		{Off: 0, Len: 4096, DataOff: 112, CRC: 1, Kind: kindData},
		{Off: 8192, Len: 1 << 20, Kind: kindHole},
	}}
	f.Add(h.appendBinary(nil))
	c := logHeader{Kind: objClaim, Seq: 9, Epoch: Epoch{4, 5}}
	f.Add(c.appendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeLogHeader(b, 1<<30)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes.
		if got := h.appendBinary(nil); !bytes.Equal(got, b[:len(got)]) {
			t.Fatalf("re-encoded header differs")
		}
	})
}

func FuzzDecodeCheckpoint(f *testing.F) {
	c := checkpoint{Seq: 20, Epoch: Epoch{1, 2}, Size: 1 << 30, Segs: []segRef{{Seq: 3, HdrLen: 100, DataLen: 9000}},
		Extents: []mapping{
			{off: 0, len: 4096, seg: 3, dataOff: 80, kind: kindData, crc: 5, whole: true},
			{off: 4096, len: 100, kind: kindZero},
		}}
	f.Add(c.appendBinary(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCheckpoint(b, 1<<30)
		if err != nil {
			return
		}
		var m extMap
		m.load(c.Extents)
		if got := c.appendBinary(nil); !bytes.Equal(got, b) {
			t.Fatalf("re-encoded checkpoint differs")
		}
	})
}

func FuzzScanJournal(f *testing.F) {
	var b bytes.Buffer
	jh := journalHeader{ID: "abc", Epoch: Epoch{1, 2}, Local: 3}
	b.Write(jh.encode())
	var rh [recordHeaderSize]byte
	data := []byte("hello, journal")
	encodeRecordHeader(&rh, jh, uint8(kindData), 4096, int64(len(data)), crc32c(data))
	b.Write(rh[:])
	b.Write(data)
	encodeRecordHeader(&rh, jh, uint8(kindHole), 0, 512, 0)
	b.Write(rh[:])
	encodeRecordHeader(&rh, jh, recSeal, 3, 0, 0)
	b.Write(rh[:])
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := scanJournalReader("fuzz", bytes.NewReader(in))
		if err != nil {
			return
		}
		if s.size > int64(len(in)) {
			t.Fatalf("scan claims %d valid bytes of %d", s.size, len(in))
		}
		for _, r := range s.records {
			if extKind(r.Kind) == kindData && r.DataOff+r.Len > s.size {
				t.Fatalf("record %+v past the valid end %d", r, s.size)
			}
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add([]byte(`{"format":"nbdd-logdisk","version":1,"id":"0123","size":1073741824,"window":16}`))
	f.Add([]byte(`{"format":"nbdd-logdisk","version":1,"id":"0123","size":1073741824,"window":16,"base":"s3://b/p@s1","base_id":"ab","base_checkpoint":9}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err == nil && (m.Size <= 0 || m.Window == 0) {
			t.Fatalf("accepted %+v", m)
		}
		if err == nil && m.Base != "" {
			if r, err := ParseRef(m.Base); err != nil || r.Snapshot == "" {
				t.Fatalf("accepted base %q", m.Base)
			}
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(`{"checkpoint":12,"created":"2026-01-02T03:04:05Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeSnapshot(b)
	})
}

func FuzzDecodeCloneEntry(f *testing.F) {
	f.Add([]byte(`{"image":"s3://b/q","snapshot":"s1","created":"2026-01-02T03:04:05Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := decodeCloneEntry(b); err == nil && ValidSnapshotName(e.Snapshot) != nil {
			t.Fatalf("accepted snapshot %q", e.Snapshot)
		}
	})
}

func FuzzParseRef(f *testing.F) {
	f.Add("s3://b/a/p@s1")
	f.Add("s3://b/@x")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		if back, err := ParseRef(r.String()); err != nil || back != r {
			t.Fatalf("%q: %+v re-parses as %+v, %v", s, r, back, err)
		}
	})
}
