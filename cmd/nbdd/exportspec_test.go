package main

import (
	"maps"
	"strings"
	"testing"
)

// TestParseExportSpec: options are bare words, cow=PATH takes a value up
// to the next comma, description takes the rest, and ",," is a comma in
// a path or value.
func TestParseExportSpec(t *testing.T) {
	for _, tc := range []struct {
		in    string
		value string
		opts  map[string]string
		err   string
	}{
		{in: "d=/img", value: "/img", opts: map[string]string{}},
		{in: "d=/img,ro,load", value: "/img", opts: map[string]string{"ro": "", "load": ""}},
		{in: "vm1=base.raw,cow=vm1.ovl", value: "base.raw", opts: map[string]string{"cow": "vm1.ovl"}},
		{in: "vm1=base.raw,cow=vm1.ovl,load,ksm", value: "base.raw", opts: map[string]string{"cow": "vm1.ovl", "load": "", "ksm": ""}},
		{in: "vm1=a,,b.raw,cow=c,,d.ovl,ro", value: "a,b.raw", opts: map[string]string{"cow": "c,d.ovl", "ro": ""}},
		{in: "vm1=base.raw,snapshot", value: "base.raw", opts: map[string]string{"snapshot": ""}},
		{in: "d=/img,ro,description=a, b,, c,cow=x", value: "/img", opts: map[string]string{"ro": "", "description": "a, b,, c,cow=x"}},
		{in: "d=/img,cow", err: `option "cow" needs a value`},
		{in: "d=/img,cow=", err: `option "cow" needs a value`},
		{in: "d=/img,ro=1", err: `option "ro" takes no value`},
		{in: "d=/img,copy", err: `unknown option "copy"`},
		{in: "d=/img,", err: `unknown option ""`},
		{in: "d=", err: "missing path"},
	} {
		spec, err := parseExportSpec("export", tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseExportSpec(%q): error %v; want one containing %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("parseExportSpec(%q): %v", tc.in, err)
		case spec.value != tc.value || !maps.Equal(spec.opts, tc.opts):
			t.Errorf("parseExportSpec(%q) = %q %v; want %q %v", tc.in, spec.value, spec.opts, tc.value, tc.opts)
		}
	}
	if _, err := parseExportSpec("memory", "m=1G,cow=x"); err == nil {
		t.Error("--memory accepted cow=")
	}
}
