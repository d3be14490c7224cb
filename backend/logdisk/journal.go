package logdisk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A journal file holds the records of one segment on local disk, from the
// first WRITE into it until the segment is in the store. Its bytes are the
// segment's data region, uploaded verbatim after the segment header, so a
// record's data sits at the same offset in both.
//
// Once its segment is durable, a small journal file is used again for a
// later segment (Disk.freeJournals): its header is rewritten in place and
// records are written over the old ones, which saves creating and
// deleting a file per segment. The records of a file's earlier use fail
// their header CRC, which covers the segment's local number too, so a
// scan stops at the first of them.
//
// File header (journalHeaderSize bytes):
//
//	 0 magic "NBDDJRN2" ("NBDDJRN1": record CRCs without the local number)
//	 8 image ID, 32 bytes (Meta.ID, zero padded)
//	40 epoch u64, 48 nonce u64 (the writer)
//	56 local number u64 (orders the journal files of a directory)
//	64 12 reserved
//	76 CRC-32C u32 of the bytes before it
//
// Each record (recordHeaderSize bytes, then the data of a data record):
//
//	 0 magic "JREC"
//	 4 kind u8 (extKind, or recSeal), 3 reserved
//	 8 export offset u64 (for recSeal: the segment's sequence number)
//	16 length u64
//	24 CRC-32C u32 of the data
//	28 CRC-32C u32 of bytes 0..27, then (NBDDJRN2) the file's local number u64
const (
	journalMagic      = "NBDDJRN2"
	journalMagicV1    = "NBDDJRN1"
	journalHeaderSize = 80
	recordMagic       = "JREC"
	recordHeaderSize  = 32
	recSeal           = 0x10
	journalPrefix     = "j-"
	journalSuffix     = ".log"
)

type journalHeader struct {
	ID    string
	Epoch Epoch
	Local uint64
	v1    bool // NBDDJRN1: record CRCs do not cover Local
}

// recordSeed is what a record header's CRC covers beyond its own bytes.
func (h journalHeader) recordSeed() (uint64, bool) { return h.Local, !h.v1 }

func (h journalHeader) encode() []byte {
	b := make([]byte, 0, journalHeaderSize)
	if h.v1 {
		b = append(b, journalMagicV1...)
	} else {
		b = append(b, journalMagic...)
	}
	var id [32]byte
	copy(id[:], h.ID)
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, h.Epoch.N)
	b = binary.BigEndian.AppendUint64(b, h.Epoch.Nonce)
	b = binary.BigEndian.AppendUint64(b, h.Local)
	b = append(b, make([]byte, 12)...)
	return binary.BigEndian.AppendUint32(b, crc32c(b))
}

func decodeJournalHeader(b []byte) (journalHeader, error) {
	if len(b) < journalHeaderSize || string(b[:8]) != journalMagic && string(b[:8]) != journalMagicV1 {
		return journalHeader{}, corrupt("journal: bad magic")
	}
	if got, want := crc32c(b[:76]), binary.BigEndian.Uint32(b[76:]); got != want {
		return journalHeader{}, corrupt("journal: header CRC %08x, want %08x", got, want)
	}
	return journalHeader{
		ID:    strings.TrimRight(string(b[8:40]), "\x00"),
		Epoch: Epoch{binary.BigEndian.Uint64(b[40:]), binary.BigEndian.Uint64(b[48:])},
		Local: binary.BigEndian.Uint64(b[56:]),
		v1:    string(b[:8]) == journalMagicV1,
	}, nil
}

// record is one decoded journal record.
type record struct {
	Kind    uint8
	Off     int64 // export offset; the sequence number for recSeal
	Len     int64
	CRC     uint32
	DataOff int64 // where the data starts in the file
}

func encodeRecordHeader(b *[recordHeaderSize]byte, h journalHeader, kind uint8, off, n int64, crc uint32) {
	copy(b[:], recordMagic)
	b[4], b[5], b[6], b[7] = kind, 0, 0, 0
	binary.BigEndian.PutUint64(b[8:], uint64(off))
	binary.BigEndian.PutUint64(b[16:], uint64(n))
	binary.BigEndian.PutUint32(b[24:], crc)
	binary.BigEndian.PutUint32(b[28:], recordHeaderCRC(b[:28], h))
}

// recordHeaderCRC is the CRC-32C of a record header's first 28 bytes and,
// for NBDDJRN2, its file's local number: a record left from an earlier
// use of the file fails it.
func recordHeaderCRC(b []byte, h journalHeader) uint32 {
	sum := crc32c(b)
	if local, seeded := h.recordSeed(); seeded {
		var l [8]byte
		binary.BigEndian.PutUint64(l[:], local)
		sum = crc32.Update(sum, crcTable, l[:])
	}
	return sum
}

func decodeRecordHeader(b []byte, h journalHeader) (record, error) {
	if len(b) < recordHeaderSize || string(b[:4]) != recordMagic {
		return record{}, corrupt("journal record: bad magic")
	}
	if got, want := recordHeaderCRC(b[:28], h), binary.BigEndian.Uint32(b[28:]); got != want {
		return record{}, corrupt("journal record: header CRC %08x, want %08x", got, want)
	}
	r := record{
		Kind: b[4],
		Off:  int64(binary.BigEndian.Uint64(b[8:])),
		Len:  int64(binary.BigEndian.Uint64(b[16:])),
		CRC:  binary.BigEndian.Uint32(b[24:]),
	}
	if r.Kind != recSeal && !extKind(r.Kind).valid() || r.Len < 0 || r.Off < 0 {
		return record{}, corrupt("journal record: kind %d, %d+%d", r.Kind, r.Off, r.Len)
	}
	return r, nil
}

// journalFile is an open journal file being appended to. Its methods are
// called with the Disk's lock held, except ReadAt.
type journalFile struct {
	f    *os.File
	path string
	hdr  journalHeader
	size int64 // bytes written: the data region's length so far
}

func journalPath(dir string, local uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%s%016x%s", journalPrefix, local, journalSuffix))
}

// createJournal creates the journal file of the segment hdr names. The
// file is named after its local number, or the next number free: the
// files a crashed writer left stay until the restart has replayed them,
// and their numbers may reach past the restart's first segments (it
// starts after its claims' window, while the crashed writer may have
// sealed more than the window before the store took them). Nothing
// relies on the name: the header orders the files (scanJournals).
func createJournal(dir string, hdr journalHeader) (*journalFile, error) {
	var path string
	var f *os.File
	var err error
	for i := range uint64(maxJournalNames) {
		path = journalPath(dir, hdr.Local+i)
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteAt(hdr.encode(), 0); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return &journalFile{f: f, path: path, hdr: hdr, size: journalHeaderSize}, nil
}

// maxJournalNames bounds the names createJournal tries: far more than
// the files a journal directory holds (the dirty limit's segments and
// the free ones).
const maxJournalNames = 1 << 16

// reuse makes j, whose segment is durable, the journal file of the
// segment hdr names: the header is rewritten and records go over the old
// ones (which fail their CRC under the new header).
func (j *journalFile) reuse(hdr journalHeader) error {
	if _, err := j.f.WriteAt(hdr.encode(), 0); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	j.hdr, j.size = hdr, journalHeaderSize
	return nil
}

// remove closes and deletes j.
func (j *journalFile) remove() {
	j.f.Close()
	os.Remove(j.path)
}

// appendRecord writes a record and its data (nil for all but data
// records) and returns where the data starts.
func (j *journalFile) appendRecord(kind uint8, off, n int64, data []byte, crc uint32) (int64, error) {
	var hdr [recordHeaderSize]byte
	encodeRecordHeader(&hdr, j.hdr, kind, off, n, crc)
	at := j.size
	bufs := [][]byte{hdr[:]}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	want := recordHeaderSize + len(data)
	for done := 0; done < want; {
		m, err := unix.Pwritev(int(j.f.Fd()), bufs, at+int64(done))
		if err != nil {
			return 0, fmt.Errorf("journal %s: %w", j.path, err)
		}
		done += m
		bufs = advance(bufs, m)
	}
	j.size += int64(want)
	return at + recordHeaderSize, nil
}

// advance drops the first n bytes of bufs.
func advance(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	return bufs
}

// journalScan is what a journal file held when it was found at start.
type journalScan struct {
	path    string
	hdr     journalHeader
	records []record // data and range records, in order
	sealed  bool
	seq     uint64 // with sealed: the segment's sequence number
	size    int64  // bytes of valid records; anything after is a torn tail
}

// scanJournal reads a journal file, stopping at the first record that is
// torn or fails its CRC: that and everything after it were never
// acknowledged as durable, and are dropped.
func scanJournal(path string) (*journalScan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return scanJournalReader(path, f)
}

func scanJournalReader(path string, r io.ReaderAt) (*journalScan, error) {
	var hb [journalHeaderSize]byte
	if _, err := r.ReadAt(hb[:], 0); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, corrupt("short header: %v", err))
	}
	hdr, err := decodeJournalHeader(hb[:])
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	s := &journalScan{path: path, hdr: hdr, size: journalHeaderSize}
	var buf []byte
	for !s.sealed {
		var rb [recordHeaderSize]byte
		if _, err := r.ReadAt(rb[:], s.size); err != nil {
			break
		}
		rec, err := decodeRecordHeader(rb[:], hdr)
		if err != nil {
			break
		}
		rec.DataOff = s.size + recordHeaderSize
		if extKind(rec.Kind) == kindData {
			if rec.Len > maxSegmentData {
				break
			}
			buf = grow(buf, int(rec.Len))
			if _, err := r.ReadAt(buf, rec.DataOff); err != nil || crc32c(buf) != rec.CRC {
				break
			}
			s.size += rec.Len
		}
		s.size += recordHeaderSize
		if rec.Kind == recSeal {
			s.sealed, s.seq = true, uint64(rec.Off)
			continue
		}
		s.records = append(s.records, rec)
	}
	return s, nil
}

func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]byte, n)
}

// listJournals returns the journal files of dir in name order (the
// header orders them: scanJournals).
func listJournals(dir string) ([]string, []uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	var paths []string
	var locals []uint64
	for _, e := range ents {
		name := e.Name()
		hex, ok := strings.CutPrefix(name, journalPrefix)
		hex, ok2 := strings.CutSuffix(hex, journalSuffix)
		if !ok || !ok2 {
			continue
		}
		n, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			continue
		}
		paths = append(paths, filepath.Join(dir, name))
		locals = append(locals, n)
	}
	idx := make([]int, len(paths))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return locals[idx[a]] < locals[idx[b]] })
	sp, sl := make([]string, len(idx)), make([]uint64, len(idx))
	for i, j := range idx {
		sp[i], sl[i] = paths[j], locals[j]
	}
	return sp, sl, nil
}

// lockDir takes an exclusive lock on dir/lock for the life of the
// process, so two nbdd processes never share a journal.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal directory %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("journal directory %s: lock: %w", dir, err)
	}
	return f, nil
}
