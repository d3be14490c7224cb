package e2e

import (
	"encoding/json"
	"testing"
)

// nbdinfoJSON is the part of `nbdinfo --json` the tests read.
type nbdinfoJSON struct {
	Protocol   string          `json:"protocol"`
	TLS        bool            `json:"TLS"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

type nbdinfoExport struct {
	Name         string   `json:"export-name"`
	Description  string   `json:"description"`
	Size         int64    `json:"export-size"`
	Contexts     []string `json:"contexts"`
	IsRotational bool     `json:"is_rotational"`
	IsReadOnly   bool     `json:"is_read_only"`
	CanCache     bool     `json:"can_cache"`
	CanDF        bool     `json:"can_df"`
	CanFastZero  bool     `json:"can_fast_zero"`
	CanFlush     bool     `json:"can_flush"`
	CanFUA       bool     `json:"can_fua"`
	CanMultiConn bool     `json:"can_multi_conn"`
	CanTrim      bool     `json:"can_trim"`
	CanZero      bool     `json:"can_zero"`
	BlockMin     int64    `json:"block_size_minimum"`
	BlockPref    int64    `json:"block_size_preferred"`
	BlockMax     int64    `json:"block_size_maximum"`
}

// nbdinfo runs nbdinfo --json with args and parses its output.
func nbdinfo(t *testing.T, args ...string) nbdinfoJSON {
	t.Helper()
	requireTool(t, "nbdinfo")
	out := command{name: "nbdinfo", args: append([]string{"--json"}, args...)}.run(t)
	var info nbdinfoJSON
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json %v: %v\n%s", args, err, out)
	}
	return info
}

func TestNBDInfo(t *testing.T) {
	requireTool(t, "nbdinfo")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--listen", "tcp://127.0.0.1:0",
			"--memory", "big=1G", "--memory", "small=1536K,ro,description=a small one", "--max-request-size", "4M")
		for _, transport := range []struct {
			name string
			uri  func(t *testing.T, export string) string
		}{{"unix", s.unixURI}, {"tcp", s.tcpURI}} {
			t.Run(transport.name, func(t *testing.T) {
				list := nbdinfo(t, "--list", transport.uri(t, "big"))
				if list.Protocol != "newstyle-fixed" {
					t.Errorf("protocol %q; want newstyle-fixed", list.Protocol)
				}
				got := map[string]nbdinfoExport{}
				for _, e := range list.Exports {
					got[e.Name] = e
				}
				if len(list.Exports) != 2 {
					t.Errorf("nbdinfo --list: %d exports %v; want big and small", len(list.Exports), list.Exports)
				}
				big, small := got["big"], got["small"]
				if big.Size != 1<<30 || small.Size != 1536<<10 {
					t.Errorf("sizes: big %d, small %d; want %d, %d", big.Size, small.Size, 1<<30, 1536<<10)
				}
				if big.IsReadOnly || !small.IsReadOnly {
					t.Errorf("read-only: big %v, small %v; want false, true", big.IsReadOnly, small.IsReadOnly)
				}
				if small.Description != "a small one" {
					t.Errorf("small description %q; want %q", small.Description, "a small one")
				}
				if small.CanTrim || small.CanZero || small.CanFUA {
					t.Errorf("read-only export advertises trim %v, zero %v, fua %v; want none", small.CanTrim, small.CanZero, small.CanFUA)
				}

				one := nbdinfo(t, transport.uri(t, "big"))
				if len(one.Exports) != 1 {
					t.Fatalf("nbdinfo --json big: %d exports; want 1", len(one.Exports))
				}
				e := one.Exports[0]
				if e.Name != "big" || e.Size != 1<<30 {
					t.Errorf("export %q size %d; want big, %d", e.Name, e.Size, 1<<30)
				}
				if !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || e.IsReadOnly {
					t.Errorf("memory export flags: flush %v fua %v trim %v zero %v ro %v; want writable with flush, fua, trim and zero",
						e.CanFlush, e.CanFUA, e.CanTrim, e.CanZero, e.IsReadOnly)
				}
				if e.BlockMin != 1 || e.BlockMax != 4<<20 || e.BlockPref < e.BlockMin || e.BlockPref > e.BlockMax {
					t.Errorf("block sizes min %d preferred %d max %d; want 1 ≤ preferred ≤ max = %d (--max-request-size)",
						e.BlockMin, e.BlockPref, e.BlockMax, 4<<20)
				}
			})
		}
	})
}
