//go:build race

package bufstrategy

const raceEnabled = true
