package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{1 << 30, "1.0 GiB"}, {3 << 40, "3.0 TiB"},
	} {
		if got := Size(tc.n); got != tc.want {
			t.Errorf("Size(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// A bar on something that is not a terminal prints only its summary.
func TestBarNotTerminal(t *testing.T) {
	var out bytes.Buffer
	b := New(&out, "import", 4096)
	b.Add(1024)
	b.Add(3072)
	if out.Len() != 0 {
		t.Fatalf("drew %q before Done on a non-terminal", out.String())
	}
	b.Done()
	got := out.String()
	if !strings.HasPrefix(got, "import 100.0% 4.0 KiB of 4.0 KiB") || strings.Count(got, "\n") != 1 {
		t.Fatalf("summary = %q, want one line starting %q", got, "import 100.0% 4.0 KiB of 4.0 KiB")
	}
}

func TestNilBar(t *testing.T) {
	var b *Bar
	b.Add(1)
	b.Done()
	New(nil, "x", 1).Done()
}
