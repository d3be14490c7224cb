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
	fmt.Fprintln(os.Stderr, "nbdd:", err)
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

func newApp() *cli.App {
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, "nbdd", version) }
	return &cli.App{
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
					fmt.Fprintln(c.App.Writer, "nbdd", version)
					return nil
				},
			},
		},
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
func usageError(_ *cli.Context, err error, _ bool) error {
	msg := err.Error()
	for _, r := range [][2]string{
		{"flag provided but not defined: -", "unknown flag --"},
		{"flag needs an argument: -", "a value is needed after --"},
		{" for flag -", " for --"},
	} {
		msg = strings.Replace(msg, r[0], r[1], 1)
	}
	return usage("%s", msg)
}

// usage is a command-line mistake: exit status 2.
func usage(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), 2)
}
