package main

import (
	"log/slog"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestSendBufferFlag: --send-buffer maps to Server.SendBuffer, where 0
// means the server's choice and a negative value the kernel's default.
func TestSendBufferFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		bad  bool
	}{
		{"auto", 0, false},
		{"0", -1, false},
		{"4KiB", 4096, false},
		{"2MiB", 2 << 20, false},
		{"1G", 1 << 30, false},
		{"4095", 0, true},
		{"2GiB", 0, true},
		{"big", 0, true},
	} {
		got, err := sendBufferFlag(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("sendBufferFlag(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// TestNoIdlePollFlag: --no-idle-poll, or NBDD_NO_IDLE_POLL, sets
// Server.NoIdlePoll; without either the server polls.
func TestNoIdlePollFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want bool
	}{
		{nil, "", false},
		{[]string{"--no-idle-poll"}, "", true},
		{nil, "1", true},
	} {
		t.Setenv("NBDD_NO_IDLE_POLL", tc.env)
		var got bool
		app := &cli.App{Flags: serveFlags(), Action: func(c *cli.Context) error {
			cfg, err := buildServer(c, slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			defer cfg.close()
			got = cfg.srv.NoIdlePoll
			return nil
		}}
		if err := app.Run(append([]string{"nbdd"}, tc.args...)); err != nil {
			t.Fatalf("%v, NBDD_NO_IDLE_POLL=%q: %v", tc.args, tc.env, err)
		}
		if got != tc.want {
			t.Errorf("%v, NBDD_NO_IDLE_POLL=%q: NoIdlePoll = %v; want %v", tc.args, tc.env, got, tc.want)
		}
	}
}
