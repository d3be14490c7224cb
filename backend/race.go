//go:build race

package backend

// raceEnabled is set under the race detector. Raw system calls
// (rawio.go) are then not made: os.File's calls tell the race detector
// about the memory the kernel writes and order calls on different
// descriptors, as a program's tests may rely on. It also makes sync.Pool
// drop some of what it is given, so tests do not count allocations.
const raceEnabled = true
