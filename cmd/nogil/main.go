// Command nogil runs benchmarks of the nogil runtime machinery against its peers
// (Go's sync package, pthreads, raw futexes, and CPython's free-threaded build).
//
// Usage:
//
//	nogil <command> [flags]
//	nogil help [command]
//
// Commands:
//
//	allocbench the page allocator against libmimalloc and glibc malloc (window test, cross-thread
//	           frees, QSBR gating; peak RSS per measurement)
//	lockbench  lock throughput and fairness (CPython's Tools/lockbench method),
//	           plus the park/unpark hand-off round trip
//	qsbrbench  QSBR against liburcu's QSBR flavour (quiescent state, grace period, delayed free, poll)
//
// Each command lives in its own file and registers itself from an init function, so adding
// one (qsbrbench, allocbench, ...) does not touch this file.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// A command is one subcommand of the tool.
type command struct {
	name    string
	summary string // one line for the command list
	// run executes the command with the arguments that follow its name. It returns
	// flag.ErrHelp after printing usage on request, a usageError for bad invocations (exit
	// status 2), or any other error for failures (exit status 1).
	run func(args []string, stdout, stderr io.Writer) error
}

// commands holds every registered command by name.
var commands = map[string]*command{}

// register adds a command; it is meant to be called from init functions.
func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("nogil: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// usageError marks errors in how the tool was invoked, as opposed to failures while running.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// errFlagsReported is returned for flag errors that the flag package has already printed
// together with the usage text; run only sets the exit status.
var errFlagsReported = usageError{}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process exit, for tests. It returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if name == "help" && len(args) > 1 {
			c, ok := commands[args[1]]
			if !ok {
				fmt.Fprintf(stderr, "nogil: unknown command %q\n", args[1])
				printUsage(stderr)
				return 2
			}
			// Explicitly requested help goes to stdout so it can be paged.
			if err := c.run([]string{"-h"}, stdout, stdout); !errors.Is(err, flag.ErrHelp) && err != nil {
				fmt.Fprintf(stderr, "nogil %s: %v\n", c.name, err)
				return 1
			}
			return 0
		}
		printUsage(stdout)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "nogil: unknown command %q\n", name)
		printUsage(stderr)
		return 2
	}
	err := c.run(args[1:], stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		if ue.msg != "" {
			fmt.Fprintf(stderr, "nogil %s: %v\nRun 'nogil help %s' for usage.\n", c.name, err, c.name)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "nogil %s: %v\n", c.name, err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "nogil benchmarks the nogil runtime machinery against its peers.\n\n")
	fmt.Fprintf(w, "Usage:\n\n\tnogil <command> [flags]\n\tnogil help [command]\n\nCommands:\n\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "\t%-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
}
