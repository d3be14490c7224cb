// Package protocol implements the NBD wire format described in proto.md of
// the NetworkBlockDevice/nbd repository ("The NBD protocol"): magics,
// handshake and transmission flags, option and reply types, command types and
// flags, and errnos, each a typed constant with a String method returning the
// spec's name.
//
// Fixed-size messages (the request, the simple reply, the structured reply
// chunk header, the option header and the option reply header) are encoded
// and decoded through fixed-size arrays with hand-written big-endian
// accessors, so handling a header allocates nothing. Variable-length option
// replies are built with append-style encoders into a caller-owned slice.
//
// The package knows nothing about servers or backends; a client could share
// it.
package protocol
