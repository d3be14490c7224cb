package bufstrategy

import "errors"

var (
	// ErrUnknownStrategy is returned by New for a name that is not one of
	// Names(). The wrapped message lists the valid names, because the name
	// normally comes straight from a command-line flag.
	ErrUnknownStrategy = errors.New("bufstrategy: unknown strategy")
	// ErrRequestSize is returned by Get for n <= 0 or n > Config.MaxRequest.
	// The server validates lengths before it asks for a buffer, so this
	// guards against a bug turning into a multi-gigabyte allocation.
	ErrRequestSize = errors.New("bufstrategy: invalid request size")
	// ErrClosed is returned by Get after the Strategy's Close: a closed
	// connection must not take budget that live connections wait for.
	ErrClosed = errors.New("bufstrategy: strategy closed")
	// ErrConfig is wrapped by New and NewBudget for invalid settings.
	ErrConfig = errors.New("bufstrategy: invalid config")
)
