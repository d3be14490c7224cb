// Package protocol implements the NBD wire format described in proto.md of
// the NetworkBlockDevice/nbd repository ("The NBD protocol"): magics,
// handshake and transmission flags, option and reply types, command types and
// flags, and errnos, each a typed constant with a String method returning the
// spec's name.
//
// Fixed-size messages (the compact and extended requests, the simple reply,
// the structured and extended reply chunk headers, the option header and
// the option reply header) are encoded
// and decoded through fixed-size arrays with hand-written big-endian
// accessors, so handling a header allocates nothing. Variable-length option
// replies are built with append-style encoders into a caller-owned slice.
//
// Extended headers (NBD_OPT_EXTENDED_HEADERS, specified on proto.md's
// extension-ext-header branch) bring 32-byte requests and reply chunks with
// 64-bit lengths, and NBD_REPLY_TYPE_BLOCK_STATUS_EXT. A Mode holds what
// the handshake agreed on (simple, structured or extended) and decides for
// a connection the request header size, how a request decodes (a header of
// the other kind is refused), how much payload follows it, and how replies
// and status chunks are encoded; Mode.Negotiate has the rules for a client
// that mixes header kinds.
//
// The package knows nothing about servers or backends; a client could share
// it.
package protocol
