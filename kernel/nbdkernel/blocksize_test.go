package nbdkernel

import (
	"testing"

	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

func TestChooseBlockSize(t *testing.T) {
	nbdd := protocol.BlockSize{Min: 1, Preferred: 4096, Max: 32 << 20}
	for _, tc := range []struct {
		name string
		want uint32
		bs   protocol.BlockSize
		got  uint32
		err  string
	}{
		{"default against nbdd", 0, nbdd, 512, ""},
		{"default without NBD_INFO_BLOCK_SIZE", 0, protocol.BlockSize{}, 512, ""},
		{"default follows a larger server minimum", 0, protocol.BlockSize{Min: 4096, Preferred: 4096, Max: 1 << 20}, 4096, ""},
		{"chosen", 2048, nbdd, 2048, ""},
		{"chosen without constraints", 4096, protocol.BlockSize{}, 4096, ""},
		{"server minimum above the kernel's", 0, protocol.BlockSize{Min: 8192}, 0, "above the kernel's maximum 4096"},
		{"below the server minimum", 512, protocol.BlockSize{Min: 1024, Max: 1 << 20}, 0, "below the server's minimum 1024"},
		{"above the server maximum", 4096, protocol.BlockSize{Min: 512, Max: 2048}, 0, "above the server's maximum 2048"},
		{"not a power of two", 1536, nbdd, 0, "want 512, 1024, 2048 or 4096"},
		{"too small", 256, nbdd, 0, "want 512"},
		{"too large", 8192, nbdd, 0, "want 512"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChooseBlockSize(tc.want, tc.bs)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.got, got)
		})
	}
}
