//go:build race

package soak

// raceEnabled scales the load down under the race detector, which makes
// every memory access 5-10 times slower.
const raceEnabled = true
