// Quick start: claims a sandbox from a warm pool of a local `agent-sandbox up`, runs a
// command, writes and runs a file, runs a Python cell, prints the time to the first output,
// and deletes the sandbox.
//
//	go run ./examples/quickstart [pool] [namespace]
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/agent-sandbox-rs/agent-sandbox/sdk/go/sandbox"
)

func main() {
	pool, ns := "python-pool", "default"
	if len(os.Args) > 1 {
		pool = os.Args[1]
	}
	if len(os.Args) > 2 {
		ns = os.Args[2]
	}
	ctx := context.Background()
	client, err := sandbox.NewClient(ctx, sandbox.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	defer client.DeleteAll(ctx)

	start := time.Now()
	sb, err := client.CreateSandbox(ctx, pool, ns)
	if err != nil {
		log.Fatal(err)
	}
	r, err := sb.Run(ctx, "echo 'Hello from Agent Sandbox!'")
	if err != nil {
		log.Fatal(err)
	}
	first := time.Since(start)
	fmt.Print(r.Stdout)
	if err := sb.Write(ctx, "hello.py", []byte("print('Hello')\n")); err != nil {
		log.Fatal(err)
	}
	if r, err = sb.Run(ctx, "python3 hello.py"); err != nil {
		log.Fatal(err)
	}
	fmt.Print(r.Stdout)
	c, err := sb.RunCode(ctx, "x = 6 * 7\nx")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.Text())
	fmt.Printf("claim to first output: %.1f ms\n", float64(first.Microseconds())/1000)
}
