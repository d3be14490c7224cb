package main

import (
	"fmt"
	"strings"

	"github.com/nbdd/nbdd/protocol"
)

// exportSpec is one --export, --memory or --s3 value: NAME=VALUE followed
// by comma-separated options, each a bare key, KEY=VALUE for the options
// in valueExportOpts, a list option KEY=VALUE that may be repeated
// (listExportOpts), or description=TEXT, which takes the rest of the
// value, commas and all, so it must come last. A comma inside the value,
// a path or an option's value is written twice (",,"), as in qemu's
// options.
type exportSpec struct {
	name, value string
	opts        map[string]string
	lists       map[string][]string
}

// knownExportOpts lists the options each kind of export accepts.
var knownExportOpts = map[string][]string{
	"export": {"ro", "description", "load", "ksm", "tls-only", "direct", "raw", "allow", "tls-allow", "cow", "snapshot"},
	"memory": {"ro", "description", "ksm", "prealloc", "tls-only", "allow", "tls-allow"},
	"s3":     {"ro", "description", "tls-only", "allow", "tls-allow", "takeover", "journal", "cache", "dirty", "flush-timeout", "addressing"},
}

// listExportOpts take a value and may be given more than once.
var listExportOpts = []string{"allow", "tls-allow"}

// valueExportOpts are the options that take one value (KEY=VALUE).
var valueExportOpts = map[string]bool{"journal": true, "cache": true, "dirty": true, "flush-timeout": true, "addressing": true, "cow": true}

// exportValueName names the VALUE of each kind of export, for messages.
var exportValueName = map[string]string{"export": "PATH", "memory": "SIZE", "s3": "s3://BUCKET/PREFIX[@SNAPSHOT]"}

func parseExportSpec(kind, s string) (exportSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return exportSpec{}, fmt.Errorf("--%s %s: want NAME=%s[,option...]", kind, quoteShort(s), exportValueName[kind])
	}
	if len(name) > protocol.MaxStringLen {
		return exportSpec{}, fmt.Errorf("--%s %s: export name of %d bytes; NBD allows at most %d", kind, quoteShort(name), len(name), protocol.MaxStringLen)
	}
	if strings.ContainsRune(name, 0) {
		return exportSpec{}, fmt.Errorf("--%s %s: export name holds a NUL byte", kind, quoteShort(name))
	}
	s = quoteShort(s)
	spec := exportSpec{name: name, opts: map[string]string{}, lists: map[string][]string{}}
	parts, desc, hasDesc := splitOptions(rest)
	spec.value = parts[0]
	if spec.value == "" {
		return exportSpec{}, fmt.Errorf("--%s %s: missing %s", kind, s, exportValueName[kind])
	}
	if hasDesc {
		parts = append(parts, "description")
	}
	for _, part := range parts[1:] {
		key, val, hasValue := strings.Cut(part, "=")
		if key == "description" {
			val = desc
		}
		if !contains(knownExportOpts[kind], key) {
			return exportSpec{}, fmt.Errorf("--%s %s: unknown option %q (known: %s)", kind, s, key, strings.Join(knownExportOpts[kind], ", "))
		}
		if contains(listExportOpts, key) {
			if val == "" {
				return exportSpec{}, fmt.Errorf("--%s %s: option %q needs a value (%s=VALUE)", kind, s, key, key)
			}
			spec.lists[key] = append(spec.lists[key], val)
			continue
		}
		switch {
		case valueExportOpts[key] && (!hasValue || val == ""):
			return exportSpec{}, fmt.Errorf("--%s %s: option %q needs a value (%s=VALUE)", kind, s, key, key)
		case !valueExportOpts[key] && key != "description" && hasValue:
			return exportSpec{}, fmt.Errorf("--%s %s: option %q takes no value", kind, s, key)
		}
		spec.opts[key] = val
	}
	return spec, nil
}

// quoteShort quotes s for a message, cut to its first 64 bytes (and the
// length said) when longer: a message is one line, and a mistyped
// 5000-byte value would fill a screen.
func quoteShort(s string) string {
	const show = 64
	if len(s) <= show {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", strings.ToValidUTF8(s[:show], ""), len(s))
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
