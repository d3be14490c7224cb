package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nbdd/nbdd/kernel/nbdkernel"
	"github.com/nbdd/nbdd/protocol"
	"github.com/urfave/cli/v2"
)

const (
	// attachHandshakeTimeout bounds the dial and handshake of each
	// connection.
	attachHandshakeTimeout = 30 * time.Second
	// maxAttachConnections caps --connections; the kernel has no fixed
	// limit, nbd-client's -C has none either, but more than a few dozen
	// sockets per device only cost memory.
	maxAttachConnections = 64
	// detachWait is how long detach waits for the device to drop to size 0.
	detachWait = 10 * time.Second
)

// attachCommand is `nbdd attach`: /dev/nbdX on an NBD server without
// nbd-client.
//
// It uses our own code, kernel/nbdkernel, not go-nbd's client package.
// go-nbd v0.3.2's client (pkg/client) cannot attach to nbdd: its NBD_OPT_GO
// declares an option length of 0 and sends the name after it, which nbdd
// refuses with NBD_REP_ERR_INVALID. Beyond that it negotiates without
// NBD_FLAG_C_FIXED_NEWSTYLE, never tells the kernel the transmission flags
// (so no FLUSH, FUA or TRIM reaches the server and a read-only export
// looks writable), offers one connection on the ioctl path only, and must
// stay in NBD_DO_IT for the device's lifetime; nbdkernel's package comment
// has the full evaluation. nbdkernel speaks fixed newstyle with NBD_OPT_GO
// through the protocol package and configures the kernel through generic
// netlink (the default: any number of connections, and the command returns
// once the kernel holds the sockets) or through ioctls (--ioctl: the
// command stays in the foreground until the device is detached).
func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "attach a kernel /dev/nbdX to an NBD server (instead of nbd-client)",
		UsageText: "nbdd attach [--export NAME] [--block-size N] [--connections N] [--timeout D] [--netlink|--ioctl] nbd://HOST[:PORT]/EXPORT|nbd+unix:///EXPORT?socket=PATH|HOST:PORT|unix:PATH /dev/nbdX",
		Description: "With --netlink (the default) the kernel keeps the connections and nbdd exits once\n" +
			"the device is up; detach it with `nbdd detach`. With --ioctl nbdd stays in the\n" +
			"foreground, serving the device, until it is detached or gets SIGINT/SIGTERM.\n" +
			"Needs root (CAP_SYS_ADMIN) and the nbd module.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "export", Usage: "export `NAME` (default: the server's default export)"},
			&cli.UintFlag{Name: "block-size", Usage: "logical block size: 512, 1024, 2048 or 4096", DefaultText: "512, or the server's minimum if larger"},
			&cli.IntFlag{Name: "connections", Value: 1, Usage: "connections to the server (more than 1 needs NBD_FLAG_CAN_MULTI_CONN)"},
			&cli.DurationFlag{Name: "timeout", Usage: "fail a request the server has not answered in this time (whole seconds; 0: the kernel's default, which waits with one connection, but with several gives up on a connection after 30 s)", DefaultText: "0"},
			&cli.BoolFlag{Name: "netlink", Usage: "configure the kernel through generic netlink and return (the default)"},
			&cli.BoolFlag{Name: "ioctl", Usage: "configure the kernel through ioctls and serve in the foreground"},
		},
		Action:       attach,
		OnUsageError: usageError,
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "detach a kernel /dev/nbdX (as nbd-client -d)",
		UsageText: "nbdd detach [--netlink|--ioctl] /dev/nbdX",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "netlink", Usage: "disconnect with NBD_CMD_DISCONNECT (the default)"},
			&cli.BoolFlag{Name: "ioctl", Usage: "disconnect with NBD_DISCONNECT and NBD_CLEAR_SOCK"},
		},
		Action:       detach,
		OnUsageError: usageError,
	}
}

// attachOptions are the validated command line of nbdd attach.
type attachOptions struct {
	network, addr string
	device        string
	export        string
	blockSize     uint32
	connections   int
	timeout       time.Duration
	ioctl         bool
}

func parseAttachOptions(c *cli.Context) (attachOptions, error) {
	if c.NArg() != 2 {
		return attachOptions{}, usage("attach takes a server and a device (got %d arguments): nbdd attach HOST:PORT /dev/nbdX", c.NArg())
	}
	o := attachOptions{
		device:      c.Args().Get(1),
		export:      c.String("export"),
		connections: c.Int("connections"),
		timeout:     c.Duration("timeout"),
		ioctl:       c.Bool("ioctl"),
	}
	srv, err := parseAttachServer(c.Args().Get(0))
	if err != nil {
		return attachOptions{}, usage("attach: server %q: %v", c.Args().Get(0), err)
	}
	o.network, o.addr = srv.network, srv.addr
	if srv.hasExport {
		if c.IsSet("export") && o.export != srv.export {
			return attachOptions{}, usage("attach: --export %q and the URI's export %q differ", o.export, srv.export)
		}
		o.export = srv.export
	}
	if c.Bool("netlink") && c.Bool("ioctl") {
		return attachOptions{}, usage("attach: --netlink and --ioctl are exclusive")
	}
	if len(o.export) > protocol.MaxStringLen {
		return attachOptions{}, usage("attach: --export of %d bytes, at most %d", len(o.export), protocol.MaxStringLen)
	}
	if bs := c.Uint("block-size"); c.IsSet("block-size") {
		if bs != 512 && bs != 1024 && bs != 2048 && bs != 4096 {
			return attachOptions{}, usage("attach: --block-size %d: want 512, 1024, 2048 or 4096", bs)
		}
		o.blockSize = uint32(bs)
	}
	if o.connections < 1 || o.connections > maxAttachConnections {
		return attachOptions{}, usage("attach: --connections %d: want 1 to %d", o.connections, maxAttachConnections)
	}
	if o.timeout < 0 {
		return attachOptions{}, usage("attach: --timeout %v: must not be negative", o.timeout)
	}
	return o, nil
}

// attachServer is where nbdd attach connects, and the export a URI names.
type attachServer struct {
	network, addr string
	export        string
	hasExport     bool // the URI named an export (its path, "/" for the default)
}

// parseAttachServer accepts what --listen takes (HOST:PORT, tcp://,
// unix:) and the NBD URIs that nbdd serve prints (doc/uri.md in the nbd
// repository): nbd://HOST[:PORT]/EXPORT and nbd+unix:///EXPORT?socket=PATH.
// TLS URIs are refused: the kernel client cannot use TLS.
func parseAttachServer(raw string) (attachServer, error) {
	scheme, _, isURI := strings.Cut(raw, "://")
	switch scheme {
	case "nbds", "nbds+unix":
		return attachServer{}, errors.New("the kernel client cannot use TLS (nbds): serve the export without tls-only to attach it")
	case "nbd", "nbd+unix":
	default:
		network, addr, err := parseListenURL(raw)
		if err != nil && isURI {
			err = errors.New("want nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, HOST:PORT or unix:PATH")
		}
		return attachServer{network: network, addr: addr}, err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return attachServer{}, err
	}
	srv := attachServer{network: "tcp", export: strings.TrimPrefix(u.Path, "/"), hasExport: true}
	if scheme == "nbd+unix" {
		srv.network, srv.addr = "unix", u.Query().Get("socket")
		if srv.addr == "" || u.Host != "" {
			return attachServer{}, errors.New("want nbd+unix:///EXPORT?socket=PATH")
		}
		return srv, nil
	}
	if u.Hostname() == "" {
		return attachServer{}, errors.New("want nbd://HOST[:PORT]/EXPORT")
	}
	port := u.Port()
	if port == "" {
		port = "10809" // doc/uri.md: the default port
	}
	srv.addr = net.JoinHostPort(u.Hostname(), port)
	return srv, nil
}

func attach(c *cli.Context) error {
	o, err := parseAttachOptions(c)
	if err != nil {
		return err
	}
	dev, err := nbdkernel.FindDevice(o.device)
	if err != nil {
		return err
	}
	if size, err := dev.Size(); err == nil && size > 0 {
		return fmt.Errorf("%w: %s (size %s)", nbdkernel.ErrBusy, dev.Path, formatSize(int64(size)))
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	exp, socks, err := openConnections(ctx, o)
	if err != nil {
		return err
	}
	defer closeFiles(socks)
	bs, err := nbdkernel.ChooseBlockSize(o.blockSize, exp.BlockSize)
	if err != nil {
		return err
	}
	if max := exp.BlockSize.Max; max != 0 && max < protocol.DefaultMaxPayload {
		// Asking for the block sizes binds this client to the maximum.
		if err := dev.LimitRequestSize(max); err != nil {
			return fmt.Errorf("the server takes requests of at most %d bytes, and %s cannot be limited to that: %w", max, dev.Path, err)
		}
	}
	if exp.Size%uint64(bs) != 0 {
		fmt.Fprintf(c.App.ErrWriter, "nbdd: warning: export size %d is not a multiple of the block size %d: the last %d bytes are not reachable\n",
			exp.Size, bs, exp.Size%uint64(bs))
	}
	cfg := nbdkernel.Config{Index: dev.Index, Size: exp.Size, BlockSize: bs, Flags: exp.Flags, Timeout: o.timeout}
	if o.ioctl {
		return attachIoctl(ctx, c, o, dev, cfg, socks)
	}
	if err := nbdkernel.Connect(cfg, socks); err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, attachedLine(o, cfg, "netlink"))
	return nil
}

// openConnections dials the server o.connections times and runs the
// handshake on each. The first connection decides: more connections need
// NBD_FLAG_CAN_MULTI_CONN, and every one must see the same export.
func openConnections(ctx context.Context, o attachOptions) (nbdkernel.Export, []*os.File, error) {
	var first nbdkernel.Export
	var socks []*os.File
	for i := range o.connections {
		exp, f, err := openConnection(ctx, o)
		if err != nil {
			closeFiles(socks)
			if o.connections > 1 {
				err = fmt.Errorf("connection %d of %d: %w", i+1, o.connections, err)
			}
			return nbdkernel.Export{}, nil, err
		}
		socks = append(socks, f)
		switch {
		case i == 0:
			first = exp
			if o.connections > 1 && exp.Flags&protocol.FlagCanMultiConn == 0 {
				closeFiles(socks)
				return nbdkernel.Export{}, nil, errors.New("server does not allow multiple connections (no NBD_FLAG_CAN_MULTI_CONN): use --connections 1")
			}
		case exp.Size != first.Size || exp.Flags != first.Flags:
			closeFiles(socks)
			return nbdkernel.Export{}, nil, fmt.Errorf("connection %d: the export changed between connections (size %d, flags %v; first: size %d, flags %v)",
				i+1, exp.Size, exp.Flags, first.Size, first.Flags)
		}
	}
	return first, socks, nil
}

// openConnection dials and negotiates one connection and returns its
// socket, ready for the kernel.
func openConnection(ctx context.Context, o attachOptions) (nbdkernel.Export, *os.File, error) {
	ctx, cancel := context.WithTimeout(ctx, attachHandshakeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, o.network, o.addr)
	if err != nil {
		return nbdkernel.Export{}, nil, err
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stopCancel := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }) // a signal ends the handshake
	exp, err := nbdkernel.Handshake(conn, o.export)
	stopCancel()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil { // the deadline or a signal, not the server
			err = fmt.Errorf("handshake: %w", ctx.Err())
		}
		return nbdkernel.Export{}, nil, fmt.Errorf("%s: %w", o.addr, err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nbdkernel.Export{}, nil, err
	}
	f, err := nbdkernel.SocketFile(conn)
	return exp, f, err
}

// attachIoctl serves the device in the foreground until it is detached;
// SIGINT or SIGTERM detach it.
func attachIoctl(ctx context.Context, c *cli.Context, o attachOptions, dev nbdkernel.Device, cfg nbdkernel.Config, socks []*os.File) error {
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// A job-control stop (Ctrl-Z) wakes every thread, the one in
	// NBD_DO_IT too, whose interrupted wait tears the device down: the
	// terminal's stop signals are ignored while it serves. (SIGSTOP
	// cannot be; it would do the same.)
	signal.Ignore(syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU)
	served := make(chan error, 1)
	go func() { served <- nbdkernel.Serve(f, cfg, socks) }()
	go announceWhenUp(ctx, c, o, dev, cfg)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	if err := nbdkernel.DisconnectIoctl(f); err != nil {
		return err
	}
	return <-served
}

// announceWhenUp prints the attached line once the device has its size:
// the kernel sets it when NBD_DO_IT starts the device.
func announceWhenUp(ctx context.Context, c *cli.Context, o attachOptions, dev nbdkernel.Device, cfg nbdkernel.Config) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if size, err := dev.Size(); err == nil && size > 0 {
			fmt.Fprintln(c.App.Writer, attachedLine(o, cfg, "ioctl, serving until detached"))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func attachedLine(o attachOptions, cfg nbdkernel.Config, mode string) string {
	conns := "1 connection"
	if o.connections > 1 {
		conns = fmt.Sprintf("%d connections", o.connections)
	}
	return fmt.Sprintf("nbdd: %s attached to %s export %q (%s, block size %d, %s, %s)",
		o.device, o.addr, o.export, formatSize(int64(cfg.Size)), cfg.BlockSize, conns, mode)
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func detach(c *cli.Context) error {
	if c.NArg() != 1 {
		return usage("detach takes one device (got %d arguments): nbdd detach /dev/nbdX", c.NArg())
	}
	if c.Bool("netlink") && c.Bool("ioctl") {
		return usage("detach: --netlink and --ioctl are exclusive")
	}
	dev, err := nbdkernel.FindDevice(c.Args().First())
	if err != nil {
		return err
	}
	if size, err := dev.Size(); err == nil && size == 0 {
		return fmt.Errorf("%w: %s", nbdkernel.ErrNotAttached, dev.Path)
	}
	if c.Bool("ioctl") {
		err = detachIoctl(dev)
	} else {
		err = nbdkernel.Disconnect(dev.Index)
	}
	if err != nil {
		return err
	}
	return waitDetached(c.Context, dev)
}

func detachIoctl(dev nbdkernel.Device) error {
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return nbdkernel.DisconnectIoctl(f)
}

// waitDetached waits until the kernel has released the device (size 0),
// so that a script may reuse it as soon as detach returns.
func waitDetached(ctx context.Context, dev nbdkernel.Device) error {
	ctx, cancel := context.WithTimeout(ctx, detachWait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		size, err := dev.Size()
		if err != nil || size == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still has size %s %v after the disconnect", dev.Path, formatSize(int64(size)), detachWait)
		case <-t.C:
		}
	}
}
