//go:build !race

package backend

// raceEnabled: see race.go.
const raceEnabled = false
