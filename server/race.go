//go:build race

package server

// raceEnabled is set under the race detector. Request headers are then
// read through the net.Conn rather than with raw calls (sockReader): its
// reads tell the race detector that what a client wrote before is
// visible, an ordering that tests of programs embedding a server and a
// client may rely on.
const raceEnabled = true
