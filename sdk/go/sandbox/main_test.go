// Test setup: the live `agent-sandbox up` the integration tests run against, named by the
// variables sdk/run-all.sh (through sdk/testenv.py) exports, and the shared sandbox.

package sandbox

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

var (
	testDataDir string
	testPool    string
	shared      *Sandbox
	sharedC     *Client
)

func TestMain(m *testing.M) {
	testDataDir = os.Getenv("AGENT_SANDBOX_TEST_DATA_DIR")
	testPool = os.Getenv("AGENT_SANDBOX_TEST_POOL")
	if testDataDir == "" || testPool == "" {
		fmt.Fprintln(os.Stderr, "the tests need a live agent-sandbox up: run sdk/run-all.sh, or set "+
			"AGENT_SANDBOX_TEST_DATA_DIR and AGENT_SANDBOX_TEST_POOL (sdk/testenv.py serve writes them)")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	var err error
	sharedC, err = NewClient(ctx, Options{DataDir: testDataDir})
	if err == nil {
		shared, err = sharedC.CreateSandbox(ctx, testPool, "")
	}
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		os.Exit(1)
	}
	code := m.Run()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	if err := sharedC.DeleteAll(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "teardown:", err)
	}
	cancel()
	sharedC.Close()
	os.Exit(code)
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newTestClient(t *testing.T, o Options) *Client {
	t.Helper()
	if o.DataDir == "" && o.Kubeconfig == "" && o.RESTConfig == nil {
		o.DataDir = testDataDir
	}
	c, err := NewClient(context.Background(), o)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.DeleteAll(ctx)
		c.Close()
	})
	return c
}
