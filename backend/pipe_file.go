//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// CanWriteFromPipe implements PipeWriter: true unless the File was opened
// with O_DIRECT.
func (f *File) CanWriteFromPipe() bool { return !f.direct }

// WriteFromPipe implements PipeWriter with splice(2) from the pipe into the
// file (iter_file_splice_write: one copy into the page cache). Like WriteAt
// it never grows the file, and it takes writeMu as WriteAt does.
func (f *File) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	if err := f.checkWrite("write", off, int64(n)); err != nil {
		return 0, err
	}
	if f.direct {
		return 0, fmt.Errorf("write from pipe: %w", errors.ErrUnsupported)
	}
	if f.serialWrites {
		f.writeMu.Lock()
		defer f.writeMu.Unlock()
	}
	done := 0
	err := f.control(func(fd int) error {
		pos := off
		for done < n {
			m, err := unix.Splice(pipe, nil, fd, &pos, n-done, unix.SPLICE_F_MOVE)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				return err
			case m == 0:
				return io.ErrUnexpectedEOF // the pipe held less than promised
			}
			done += int(m)
		}
		return nil
	})
	if err != nil {
		return done, fmt.Errorf("splice into %s at offset %d: %w", f.f.Name(), off+int64(done), err)
	}
	return done, nil
}
