// Time to first command: claims a sandbox from a warm pool and times claim create → the first
// stdout bytes of `echo` through the SDK, for a number of iterations on an instance at rest
// (each sandbox deleted and the pool given time to refill between iterations). The first
// iteration warms the connections and is not counted.
//
//	go run ./examples/ttfc -pool python-pool -n 20 -rest 2s
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"sort"
	"time"

	"github.com/agent-sandbox-rs/agent-sandbox/sdk/go/sandbox"
)

func main() {
	pool := flag.String("pool", "python-pool", "warm pool")
	ns := flag.String("namespace", "default", "namespace")
	n := flag.Int("n", 20, "iterations counted")
	rest := flag.Duration("rest", 2*time.Second, "pause between iterations (the pool refills)")
	flag.Parse()
	ctx := context.Background()
	client, err := sandbox.NewClient(ctx, sandbox.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	var ms []float64
	for i := 0; i <= *n; i++ {
		start := time.Now()
		var first time.Duration
		sb, err := client.CreateSandbox(ctx, *pool, *ns)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := sb.Run(ctx, "echo hi", sandbox.OnStdout(func(string) {
			if first == 0 {
				first = time.Since(start)
			}
		})); err != nil {
			log.Fatal(err)
		}
		if err := sb.Terminate(ctx); err != nil {
			log.Fatal(err)
		}
		if i > 0 {
			ms = append(ms, float64(first.Microseconds())/1000)
		}
		time.Sleep(*rest)
	}
	sort.Float64s(ms)
	q := func(p float64) float64 { return ms[int(p*float64(len(ms)-1)+0.5)] }
	fmt.Printf("go: n=%d p50=%.1f p90=%.1f min=%.1f max=%.1f ms\n", len(ms), q(0.5), q(0.9), ms[0], ms[len(ms)-1])
}
