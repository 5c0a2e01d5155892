//go:build !amd64 && !arm64

package gtoken

import "golang.org/x/sys/unix"

func current() uintptr { return uintptr(unix.Gettid()) }
