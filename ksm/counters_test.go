package ksm

import (
	"strings"
	"testing"
)

const smapsSample = `7efffffff000-7f0000000000 rw-p 00000000 00:00 0 
Size:                  4 kB
KSM:                   4 kB
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
Rss:                  16 kB
KSM:                  12 kB
VmFlags: rd wr mr mw me ac mg
7f0000004000-7f000000c000 r--p 00000000 08:01 1234                       /usr/lib/x.so
Size:                 32 kB
KSM:                   0 kB
7f1000000000-7f1000010000 rw-p 00000000 00:00 0 
Size:                 64 kB
KSM:                  64 kB
`

const procStatSample = `ksm_rmap_items 12288
ksm_zero_pages 0
ksm_merging_pages 8192
ksm_process_profit 32768000
ksm_merge_any: no
ksm_mergeable: yes
`

func TestSumSmapsKSM(t *testing.T) {
	tests := []struct {
		name   string
		lo, hi uint64
		want   int64
	}{
		{"exact VMA", 0x7f0000000000, 0x7f0000004000, 12 << 10},
		{"two VMAs", 0x7f0000000000, 0x7f000000c000, 12 << 10},
		{"half of a merged VMA", 0x7f1000000000, 0x7f1000008000, 32 << 10},
		{"none", 0x1000, 0x2000, 0},
	}
	for _, tt := range tests {
		got, err := sumSmapsKSM(strings.NewReader(smapsSample), tt.lo, tt.hi)
		if err != nil || got != tt.want {
			t.Errorf("%s: got %d, %v; want %d", tt.name, got, err, tt.want)
		}
	}
	p := writeTemp(t, smapsSample)
	if got, err := MappingKSMBytes(p, 0x7f0000000000, 0x4000); err != nil || got != 12<<10 {
		t.Errorf("MappingKSMBytes = %d, %v", got, err)
	}
	if _, err := sumSmapsKSM(strings.NewReader("7f0000000000-7f0000004000 rw-p\nKSM: x kB\n"), 0, 1<<60); err == nil {
		t.Error("bad KSM line accepted")
	}
}

func TestReadProcStat(t *testing.T) {
	got, err := ReadProcStat(writeTemp(t, procStatSample))
	want := ProcStat{RmapItems: 12288, MergingPages: 8192, ProcessProfit: 32768000, Mergeable: true}
	if err != nil || got != want {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	if _, err := ReadProcStat(writeTemp(t, "ksm_rmap_items x\n")); err == nil {
		t.Error("bad number accepted")
	}
	if _, err := ReadProcStat("/nonexistent"); err == nil {
		t.Error("missing file accepted")
	}
}

func TestReadCounters(t *testing.T) {
	f := NewFake()
	f.SetCounter("general_profit", -640)
	f.SetCounter("full_scans", 3)
	f.Remove("stable_node_dups") // older kernel
	c, err := ReadCounters(f)
	if err != nil || c.GeneralProfit != -640 || c.FullScans != 3 {
		t.Errorf("got %+v, %v", c, err)
	}
	f.Set("pages_shared", "lots")
	if _, err := ReadCounters(f); err == nil {
		t.Error("bad counter accepted")
	}
}

func TestAnonBytes(t *testing.T) {
	got, err := AnonBytes(writeTemp(t, "MemTotal: 1 kB\nAnonPages:       20276 kB\n"))
	if err != nil || got != 20276*1024 {
		t.Errorf("got %d, %v", got, err)
	}
	if _, err := AnonBytes(writeTemp(t, "MemTotal: 1 kB\n")); err == nil {
		t.Error("missing AnonPages accepted")
	}
}
