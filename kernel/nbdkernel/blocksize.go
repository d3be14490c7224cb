package nbdkernel

import (
	"fmt"
	"math/bits"

	"github.com/nbdd/nbdd/protocol"
)

// Logical block sizes the kernel accepts (blk_validate_block_size: a power
// of two from 512 to the page size, 4096 on the machines nbdd targets).
const (
	MinBlockSize = 512
	MaxBlockSize = 4096
)

// ChooseBlockSize picks the device's logical block size. want is the
// user's choice, 0 for the default: 512 bytes, or the server's minimum
// block size when that is larger.
//
// 512 is nbd-client's and qemu-nbd's default, and what a disk image
// expects: a partition table written on a 512-byte-sector disk is read at
// the wrong offsets through a 4096-byte logical block (GPT's header is at
// LBA 1), and an ext4 with 1 KiB blocks cannot be mounted. It costs no
// throughput: the block layer merges requests up to max_sectors_kb whatever
// the logical block size, so the server's preferred size (4096 for nbdd) is
// about alignment, not request size.
func ChooseBlockSize(want uint32, bs protocol.BlockSize) (uint32, error) {
	if want == 0 {
		want = max(MinBlockSize, bs.Min)
		if want > MaxBlockSize {
			return 0, fmt.Errorf("the server's minimum block size %d is above the kernel's maximum %d", bs.Min, MaxBlockSize)
		}
	}
	if want < MinBlockSize || want > MaxBlockSize || bits.OnesCount32(want) != 1 {
		return 0, fmt.Errorf("block size %d: want 512, 1024, 2048 or 4096", want)
	}
	if bs.Min != 0 && want < bs.Min {
		return 0, fmt.Errorf("block size %d is below the server's minimum %d", want, bs.Min)
	}
	if bs.Max != 0 && want > bs.Max {
		return 0, fmt.Errorf("block size %d is above the server's maximum %d", want, bs.Max)
	}
	return want, nil
}
