//go:build !race

package server

// raceEnabled: see race.go.
const raceEnabled = false
