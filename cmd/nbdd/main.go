// Command nbdd serves block devices (memory, files, directories of
// images) over the NBD protocol.
//
//	nbdd serve                      # 1 GiB in-memory export on 127.0.0.1:10809
//	nbdd serve --export disk=/var/lib/images/disk.raw --listen unix:///run/nbdd.sock
//	nbdd version
package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "0.1.0-dev"

func main() {
	os.Exit(run(os.Args))
}

// run executes the command line and returns the exit status. Every
// failure is reported as one line on stderr: usage mistakes with status 2,
// runtime failures with status 1.
func run(args []string) int {
	err := newApp().Run(args)
	if err == nil {
		return 0
	}
	if msg := err.Error(); msg != "" { // empty: a --run command's status, passed on
		fmt.Fprintln(os.Stderr, "nbdd:", msg)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

func newApp() *cli.App {
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, versionLine()) }
	app := &cli.App{
		Name:    "nbdd",
		Usage:   "serve block devices over the NBD protocol",
		Version: version,
		// --export NAME=PATH,ro must not be split at its commas.
		DisableSliceFlagSeparator: true,
		HideHelpCommand:           true,
		OnUsageError:              usageError,
		// run prints the error, as "nbdd: ..." on one line, and exits.
		ExitErrHandler: func(*cli.Context, error) {},
		Action:         topLevel,
		Commands: []*cli.Command{
			serveCommand(),
			ksmCommand(),
			imageCommand(),
			attachCommand(), detachCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, versionLine())
					return nil
				},
			},
		},
	}
	hideSwitchDefaults(app.Commands)
	return app
}

// versionLine is "nbdd VERSION (commit REV[, modified], Go VERSION)". The
// commit comes from the build information the go command records
// (runtime/debug.ReadBuildInfo): vcs.revision for a build in a git
// checkout, or the module version for `go install ...@VERSION`, whose
// pseudo-versions end in the commit too. Neither needs -ldflags.
func versionLine() string {
	info, _ := debug.ReadBuildInfo()
	return describeBuild(version, info)
}

func describeBuild(version string, info *debug.BuildInfo) string {
	line := "nbdd " + version
	if info == nil {
		return line
	}
	rev, modified := buildRevision(info)
	switch {
	case rev == "":
		rev = "commit unknown: built without VCS information"
	case strings.HasPrefix(rev, "v"):
		rev = "module " + rev
	default:
		rev = "commit " + rev[:min(len(rev), 12)]
	}
	if modified {
		rev += ", modified"
	}
	return fmt.Sprintf("%s (%s, %s)", line, rev, info.GoVersion)
}

// buildRevision returns the commit nbdd was built from (vcs.revision),
// or else the module version (which for a pseudo-version ends in the
// commit), or "" if info has neither; and whether the tree had changes.
func buildRevision(info *debug.BuildInfo) (rev string, modified bool) {
	if info == nil {
		return "", false
	}
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			modified = true
		}
	}
	if v := info.Main.Version; rev == "" && v != "" && v != "(devel)" {
		rev = v
	}
	return rev, modified
}

// hideSwitchDefaults keeps help from printing "(default: false)" after
// every switch: a switch is off unless given, and for one whose text says
// it is the default behaviour (attach --netlink) it contradicts the text.
func hideSwitchDefaults(cmds []*cli.Command) {
	for _, cmd := range cmds {
		for _, f := range cmd.Flags {
			if b, ok := f.(*cli.BoolFlag); ok && !b.Value {
				b.DisableDefaultText = true
			}
		}
		hideSwitchDefaults(cmd.Subcommands)
	}
}

// topLevel runs for a command line with no known command: help for
// "nbdd" or "nbdd help [COMMAND]", a usage error for anything else.
func topLevel(c *cli.Context) error {
	switch {
	case c.NArg() == 0:
		return cli.ShowAppHelp(c)
	case c.Args().First() == "help" && c.NArg() == 1:
		return cli.ShowAppHelp(c)
	case c.Args().First() == "help" && c.App.Command(c.Args().Get(1)) != nil:
		return cli.ShowCommandHelp(c, c.Args().Get(1))
	case c.Args().First() == "help":
		return usage("no command %q (see nbdd --help)", c.Args().Get(1))
	}
	return usage("unknown command %q (see nbdd --help)", c.Args().First())
}

// usageError turns a flag parsing error into one line and status 2, with
// flags spelled as they are typed (the flag package writes "-export").
func usageError(c *cli.Context, err error, _ bool) error {
	msg := err.Error()
	for _, r := range [][2]string{
		{"flag provided but not defined: -", "unknown flag --"},
		{"flag needs an argument: -", "a value is needed after --"},
		{" for flag -", " for --"},
	} {
		msg = strings.Replace(msg, r[0], r[1], 1)
	}
	if m := badDurationRE.FindStringSubmatch(msg); m != nil && isDurationFlag(c, m[2]) {
		msg = fmt.Sprintf("invalid value %q for --%s: want a duration with a unit, such as %ss, 500ms or 2m", m[1], m[2], durationExample(m[1]))
	}
	return usage("%s", msg)
}

// badDurationRE matches the flag package's message for a value that
// time.ParseDuration refused: it says only "parse error".
var badDurationRE = regexp.MustCompile(`^invalid value "(.*)" for --([a-z0-9-]+): parse error$`)

func isDurationFlag(c *cli.Context, name string) bool {
	var flags []cli.Flag
	if c != nil && c.Command != nil {
		flags = c.Command.Flags
	}
	if c != nil && c.App != nil {
		flags = append(flags, c.App.Flags...)
	}
	for _, f := range flags {
		if d, ok := f.(*cli.DurationFlag); ok && d.Name == name {
			return true
		}
	}
	return false
}

// durationExample is v when it is a bare number (the unit is what is
// missing), 10 otherwise.
func durationExample(v string) string {
	if v != "" && strings.Trim(v, "0123456789.") == "" {
		return v
	}
	return "10"
}

// usage is a command-line mistake: exit status 2.
func usage(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), 2)
}
