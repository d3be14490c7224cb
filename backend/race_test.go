//go:build race

package backend

// raceEnabled: under the race detector sync.Pool drops some of what it is
// given, so allocation counts are not checked.
const raceEnabled = true
