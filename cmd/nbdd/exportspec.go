package main

import (
	"fmt"
	"strings"
)

// exportSpec is one --export or --memory value: NAME=VALUE followed by
// comma-separated options, each a bare key, KEY=VALUE for the options
// that take a value (cow=PATH), or description=TEXT, which takes the rest
// of the value, commas and all, so it must come last. A comma inside the
// value or a path is written twice (",,"), as in qemu's options.
type exportSpec struct {
	name, value string
	opts        map[string]string
}

// knownExportOpts lists the options each kind of export accepts.
var knownExportOpts = map[string][]string{
	"export": {"ro", "description", "load", "ksm", "tls-only", "direct", "cow", "snapshot"},
	"memory": {"ro", "description", "ksm", "tls-only"},
}

// valueOpts are the options that take a value, other than description.
var valueOpts = []string{"cow"}

func parseExportSpec(kind, s string) (exportSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return exportSpec{}, fmt.Errorf("--%s %q: want NAME=%s[,option...]", kind, s, map[string]string{"export": "PATH", "memory": "SIZE"}[kind])
	}
	if strings.ContainsRune(name, 0) || len(name) > 4096 {
		return exportSpec{}, fmt.Errorf("--%s %q: invalid export name", kind, s)
	}
	spec := exportSpec{name: name, opts: map[string]string{}}
	parts, desc, hasDesc := splitOptions(rest)
	spec.value = parts[0]
	if spec.value == "" {
		return exportSpec{}, fmt.Errorf("--%s %q: missing %s", kind, s, map[string]string{"export": "path", "memory": "size"}[kind])
	}
	if hasDesc {
		parts = append(parts, "description")
	}
	for _, part := range parts[1:] {
		key, val, hasVal := strings.Cut(part, "=")
		switch {
		case !contains(knownExportOpts[kind], key):
			return exportSpec{}, fmt.Errorf("--%s %q: unknown option %q (known: %s)", kind, s, key, strings.Join(knownExportOpts[kind], ", "))
		case key == "description":
			val = desc
		case contains(valueOpts, key) && val == "":
			return exportSpec{}, fmt.Errorf("--%s %q: option %q needs a value (%s=PATH)", kind, s, key, key)
		case !contains(valueOpts, key) && hasVal:
			return exportSpec{}, fmt.Errorf("--%s %q: option %q takes no value", kind, s, key)
		}
		spec.opts[key] = val
	}
	return spec, nil
}

// splitOptions splits the part of a spec after NAME= at single commas,
// turning ",," into a comma, up to a description=, whose text it returns
// as it is.
func splitOptions(rest string) (parts []string, desc string, hasDesc bool) {
	var cur strings.Builder
	for i := 0; i < len(rest); i++ {
		switch {
		case rest[i] != ',':
			cur.WriteByte(rest[i])
		case i+1 < len(rest) && rest[i+1] == ',':
			cur.WriteByte(',')
			i++
		default:
			parts = append(parts, cur.String())
			cur.Reset()
			if text, ok := strings.CutPrefix(rest[i+1:], "description="); ok {
				return parts, text, true
			}
		}
	}
	return append(parts, cur.String()), "", false
}

func (e exportSpec) has(opt string) bool {
	_, ok := e.opts[opt]
	return ok
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
