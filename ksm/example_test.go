package ksm_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nbdd/nbdd/ksm"
)

// This is how cmd/nbdd wires the throttler for `nbdd serve --ksm --ksm-socket
// PATH --ksm-watch DIR`. Run restores the original knobs when ctx ends.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	th, err := ksm.New(ksm.Config{}) // /sys/kernel/mm/ksm, /run/nbdd/ksm.snapshot
	if err != nil {
		slog.Error("ksm", "err", err)
		return
	}
	go ksm.ServeSocket(ctx, ksm.DefaultSocket, th)        // --ksm-socket
	go ksm.WatchDir(ctx, "/var/lib/nbdd/images", th.Send) // --ksm-watch
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			th.Kick()
		}
	}()

	// The server reports each mergeable export and where its mapping lives:
	//	th.ExportOpened(name, size); th.RegisterMapping(name, base, length)
	//	...; th.ExportClosed(name)
	if err := th.Run(ctx); err != nil {
		slog.Error("ksm: restore", "err", err)
	}
}

// `nbdd ksm status` asks the running server, or reads sysfs if none answers.
func ExampleQueryStatus() {
	ctx := context.Background()
	st, err := ksm.QueryStatus(ctx, ksm.DefaultSocket)
	if err != nil {
		st, err = ksm.ReadStatus(ksm.Dir{})
	}
	if err == nil {
		st.Print(os.Stdout)
	}
}
