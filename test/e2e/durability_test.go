package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestDurabilityKill9 proves the durability promise: a write
// acknowledged before an acknowledged FLUSH, and a write with FUA, survive
// kill -9 of nbdd. nbdsh writes both and stays connected (a disconnect
// would let nbdd flush on its own); nbdd is killed, restarted on the same
// file and socket path, and the bytes are read back through it. The "load" variant keeps
// the image in memory and writes it back on FLUSH, where losing a write is
// a real possibility.
func TestDurabilityKill9(t *testing.T) {
	requireTool(t, "nbdsh")
	for _, variant := range []string{"file", "load"} {
		t.Run(variant, func(t *testing.T) {
			forEachStrategy(t, func(t *testing.T, strategy string) {
				img := sparseFile(t, t.TempDir(), 16<<20)
				spec := "disk=" + img
				if variant == "load" {
					spec += ",load"
				}
				s := startNBDD(t, "--strategy", strategy, "--export", spec)
				writeAndHold(t, s.unixURI(t, "disk"), func() { s.kill(t) })

				// Restart on the same socket path: the dead server's socket
				// file is still there and must be replaced.
				s2 := launchNBDD(t, nil, []string{"serve", "--listen", "unix://" + s.sock, "--strategy", strategy, "--export", spec}, 1)
				nbdsh(t, s2.unixURI(t, "disk"), "durable.py", "MODE=verify", "SEED=3")
			})
		})
	}
}

// writeAndHold runs durable.py in write mode against uri, and calls crash
// once the writes are acknowledged, while nbdsh is still connected.
func writeAndHold(t *testing.T, uri string, crash func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdsh", nbdshArgs(t, uri, "durable.py")...)
	cmd.Env = pythonEnv("MODE=write", "SEED=3")
	stdin, err := cmd.StdinPipe() // held open: the script waits on it
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if sc.Text() == "READY" {
			crash()
			return
		}
	}
	t.Fatalf("nbdsh durable.py (write) ended before READY:\n%s%s", out.String(), stderr)
}
