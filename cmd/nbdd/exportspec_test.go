package main

import (
	"strings"
	"testing"
)

func TestParseExportSpec(t *testing.T) {
	for _, tc := range []struct {
		kind, in string
		value    string
		opts     map[string]string
		lists    map[string][]string
		err      string // substring of the error; "" for none
	}{
		{kind: "export", in: "d=/img", value: "/img", opts: map[string]string{}},
		{kind: "export", in: "d=/img,ro,raw", value: "/img", opts: map[string]string{"ro": "", "raw": ""}},
		{kind: "memory", in: "m=1G,description=a, b=c", value: "1G", opts: map[string]string{"description": "a, b=c"}},
		{kind: "memory", in: "m=1G,ro,description=last", value: "1G", opts: map[string]string{"ro": "", "description": "last"}},
		{kind: "export", in: "d=/img,allow=10.0.0.0/8,allow=::1/128", value: "/img", opts: map[string]string{}, lists: map[string][]string{"allow": {"10.0.0.0/8", "::1/128"}}},
		{kind: "s3", in: "v=s3://b/p,journal=/j,cache=64M,ro", value: "s3://b/p", opts: map[string]string{"journal": "/j", "cache": "64M", "ro": ""}},
		{kind: "s3", in: "v=s3://b/p,journal", err: `option "journal" needs a value`},
		{kind: "s3", in: "v=s3://b/p,journal=", err: `option "journal" needs a value`},
		{kind: "export", in: "d=/img,ro=1", err: `option "ro" takes no value`},
		{kind: "export", in: "d=/img,allow", err: `option "allow" needs a value`},
		{kind: "export", in: "d=/img,bogus", err: `unknown option "bogus"`},
		{kind: "memory", in: "m=1G,journal=/j", err: `unknown option "journal"`},
		{kind: "export", in: "vm1=base.raw,cow=vm1.ovl", value: "base.raw", opts: map[string]string{"cow": "vm1.ovl"}},
		{kind: "export", in: "vm1=base.raw,cow=vm1.ovl,load,ksm", value: "base.raw", opts: map[string]string{"cow": "vm1.ovl", "load": "", "ksm": ""}},
		{kind: "export", in: "vm1=a,,b.raw,cow=c,,d.ovl,ro", value: "a,b.raw", opts: map[string]string{"cow": "c,d.ovl", "ro": ""}},
		{kind: "export", in: "vm1=base.raw,snapshot", value: "base.raw", opts: map[string]string{"snapshot": ""}},
		{kind: "export", in: "d=/img,ro,description=a, b,, c,cow=x", value: "/img", opts: map[string]string{"ro": "", "description": "a, b,, c,cow=x"}},
		{kind: "export", in: "d=/img,cow", err: `option "cow" needs a value`},
		{kind: "export", in: "d=/img,cow=", err: `option "cow" needs a value`},
		{kind: "export", in: "d=/img,", err: `unknown option ""`},
		{kind: "memory", in: "m=1G,cow=x", err: `unknown option "cow"`},
		{kind: "export", in: "=/img", err: "want NAME=PATH"},
		{kind: "s3", in: "v=", err: "missing s3://BUCKET/PREFIX"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			spec, err := parseExportSpec(tc.kind, tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("error = %v, want none", err)
			}
			if spec.value != tc.value {
				t.Errorf("value = %q, want %q", spec.value, tc.value)
			}
			if len(spec.opts) != len(tc.opts) {
				t.Errorf("opts = %q, want %q", spec.opts, tc.opts)
			}
			for k, v := range tc.opts {
				if got, ok := spec.opts[k]; !ok || got != v {
					t.Errorf("opts[%q] = %q, %v; want %q", k, got, ok, v)
				}
			}
			for k, v := range tc.lists {
				if strings.Join(spec.lists[k], " ") != strings.Join(v, " ") {
					t.Errorf("lists[%q] = %q, want %q", k, spec.lists[k], v)
				}
			}
		})
	}
}
