package main

import (
	"fmt"
	"strings"
)

// exportSpec is one --export, --memory or --s3 value: NAME=VALUE followed
// by comma-separated options, each a bare key, KEY=VALUE for the options
// in valueExportOpts (the value ends at the next comma), or
// description=TEXT, which takes the rest of the value, commas and all, so
// it must come last.
type exportSpec struct {
	name, value string
	opts        map[string]string
}

// knownExportOpts lists the options each kind of export accepts.
var knownExportOpts = map[string][]string{
	"export": {"ro", "description", "load", "ksm", "tls-only", "direct"},
	"memory": {"ro", "description", "ksm", "tls-only"},
	"s3":     {"ro", "description", "tls-only", "takeover", "journal", "cache", "dirty", "flush-timeout", "addressing"},
}

// valueExportOpts are the options that take a value (KEY=VALUE).
var valueExportOpts = map[string]bool{"journal": true, "cache": true, "dirty": true, "flush-timeout": true, "addressing": true}

// exportValueName names the VALUE of each kind of export, for messages.
var exportValueName = map[string]string{"export": "PATH", "memory": "SIZE", "s3": "s3://BUCKET/PREFIX"}

func parseExportSpec(kind, s string) (exportSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return exportSpec{}, fmt.Errorf("--%s %q: want NAME=%s[,option...]", kind, s, exportValueName[kind])
	}
	if strings.ContainsRune(name, 0) || len(name) > 4096 {
		return exportSpec{}, fmt.Errorf("--%s %q: invalid export name", kind, s)
	}
	spec := exportSpec{name: name, opts: map[string]string{}}
	parts := strings.Split(rest, ",")
	spec.value = parts[0]
	if spec.value == "" {
		return exportSpec{}, fmt.Errorf("--%s %q: missing %s", kind, s, exportValueName[kind])
	}
	for i := 1; i < len(parts); i++ {
		key, val, _ := strings.Cut(parts[i], "=")
		if key == "description" {
			val = strings.Join(append([]string{val}, parts[i+1:]...), ",")
			i = len(parts)
		}
		if !contains(knownExportOpts[kind], key) {
			return exportSpec{}, fmt.Errorf("--%s %q: unknown option %q (known: %s)", kind, s, key, strings.Join(knownExportOpts[kind], ", "))
		}
		hasValue := strings.Contains(parts[i], "=")
		switch {
		case valueExportOpts[key] && (!hasValue || val == ""):
			return exportSpec{}, fmt.Errorf("--%s %q: option %q needs a value (%s=VALUE)", kind, s, key, key)
		case !valueExportOpts[key] && key != "description" && hasValue:
			return exportSpec{}, fmt.Errorf("--%s %q: option %q takes no value", kind, s, key)
		}
		spec.opts[key] = val
	}
	return spec, nil
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
