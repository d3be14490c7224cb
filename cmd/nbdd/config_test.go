package main

import "testing"

// TestSendBufferFlag: --send-buffer maps to Server.SendBuffer, where 0
// means the server's choice and a negative value the kernel's default.
func TestSendBufferFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		bad  bool
	}{
		{"auto", 0, false},
		{"0", -1, false},
		{"4KiB", 4096, false},
		{"2MiB", 2 << 20, false},
		{"1G", 1 << 30, false},
		{"4095", 0, true},
		{"2GiB", 0, true},
		{"big", 0, true},
	} {
		got, err := sendBufferFlag(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("sendBufferFlag(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
