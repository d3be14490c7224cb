//go:build !race

package backend

// raceEnabled: see race_test.go.
const raceEnabled = false
