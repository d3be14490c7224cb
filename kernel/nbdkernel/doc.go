// Package nbdkernel attaches a Linux /dev/nbdN to an NBD server without
// nbd-client: it runs the client handshake in Go, then hands the sockets to
// the kernel's nbd driver, through generic netlink (NBD_CMD_CONNECT) or
// through the older ioctl interface (NBD_SET_SOCK ... NBD_DO_IT).
//
// # Why not go-nbd's client
//
// github.com/pojntfx/go-nbd v0.3.2 has a client (pkg/client, Connect and
// Disconnect) that does the same job on the ioctl path. It falls short in
// ways that matter to a kernel attach, so this package is our own code on
// golang.org/x/sys/unix and the protocol package.
//
//   - It cannot attach to nbdd at all. Its NBD_OPT_GO header declares a
//     length of 0 and the export name and information count follow it
//     anyway (pkg/client/nbd.go, Connect); only go-nbd's own server, which
//     ignores option lengths, accepts that. nbdd reads the option as empty,
//     answers NBD_REP_ERR_INVALID ("missing string length"), and go-nbd
//     reports "unknown reply": seen in the qemu guest against nbdd for a
//     read-write and a read-only export.
//   - It sends client flags 0, not NBD_FLAG_C_FIXED_NEWSTYLE, and then
//     NBD_OPT_GO, which proto.md allows only after fixed newstyle was
//     agreed. nbdd tolerates it; a strict server may not.
//   - It never calls NBD_SET_FLAGS, so the kernel never learns the
//     transmission flags: no FLUSH or FUA (fsync does not reach the
//     server), no TRIM or WRITE_ZEROES, a read-only export shown writable.
//   - Error replies lose the server's message (NBD_REP_ERR_UNKNOWN becomes
//     ErrUnknownErr, every other one ErrUnknownReply); an unknown NBD_INFO
//     type, which the spec says to ignore, is fatal; reply lengths are not
//     bounded. It does parse nbdd's NBD_INFO_BLOCK_SIZE, and with no block
//     size given it takes the preferred one (4096 from nbdd) as the logical
//     block size; see ChooseBlockSize for why 512 is the better default.
//   - One connection only: its NBD_SET_SOCK runs on whatever thread the
//     goroutine is on, and the kernel refuses a second NBD_SET_SOCK from
//     another task. There is no netlink path, so the process must stay in
//     NBD_DO_IT for the life of the device, and a signal landing on that
//     thread tears the device down.
//   - Timeout is a bare int of seconds; NBD_SET_SIZE_BLOCKS truncates the
//     size to whole blocks; the package pulls in a udev netlink dependency
//     and imports go-nbd's server for one error value (STYLE.md G1).
//
// # Netlink and ioctl
//
// Connect (netlink, the default of `nbdd attach`) configures the device in
// one message with every socket, the size, block size, transmission flags
// and timeout. The kernel keeps its own references to the sockets, so the
// attaching process may exit at once, as nbd-client does; Disconnect
// (NBD_CMD_DISCONNECT) detaches. Any number of connections works when the
// server advertises NBD_FLAG_CAN_MULTI_CONN.
//
// Serve (ioctl) issues the same configuration as ioctls and then blocks in
// NBD_DO_IT, which is where the kernel runs the device, so the process must
// stay alive for as long as the device is attached. It runs every ioctl on
// one locked thread with all signals blocked, which lets it add several
// sockets and keeps stray signals from tearing the device down.
// DisconnectIoctl (NBD_DISCONNECT, NBD_CLEAR_SOCK) or Disconnect ends it.
//
// TLS is not offered: the kernel takes plain sockets, so a server that
// requires TLS answers NBD_REP_ERR_TLS_REQD and Handshake reports it.
//
// The package is Linux-only and needs CAP_SYS_ADMIN and the nbd module.
package nbdkernel
