// Files: reading, writing, listing, checking and deleting files in a sandbox over sandboxd's
// /v1/files API (relative paths start at sandboxd's work directory).

package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// FileEntry is one entry of a directory listing.
type FileEntry struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Type is "file" or "directory".
	Type string `json:"type"`
	// Modified is when the entry last changed.
	Modified time.Time `json:"-"`
	Mode     string    `json:"mode"`

	ModifiedAt string `json:"modified_at"`
}

// Files reads and writes files in a sandbox.
type Files struct{ s *Sandbox }

// Files returns the sandbox's file API.
func (s *Sandbox) Files() *Files { return &Files{s: s} }

// Write writes a file; see Files.Write.
func (s *Sandbox) Write(ctx context.Context, path string, content []byte, opts ...CallOption) error {
	return s.Files().Write(ctx, path, content, opts...)
}

// Read reads a file; see Files.Read.
func (s *Sandbox) Read(ctx context.Context, path string, opts ...CallOption) ([]byte, error) {
	return s.Files().Read(ctx, path, opts...)
}

// List lists a directory; see Files.List.
func (s *Sandbox) List(ctx context.Context, path string, opts ...CallOption) ([]FileEntry, error) {
	return s.Files().List(ctx, path, opts...)
}

// Exists reports whether a path exists; see Files.Exists.
func (s *Sandbox) Exists(ctx context.Context, path string, opts ...CallOption) (bool, error) {
	return s.Files().Exists(ctx, path, opts...)
}

var fileMode = regexp.MustCompile(`^0[0-7]{3}$`)

func filePath(path string) (string, error) {
	if path == "" || strings.ContainsRune(path, 0) {
		return "", newErr(KindPath, nil, "a file path must be a non-empty string without NUL, not %q", path)
	}
	return "/v1/files/" + url.PathEscape(path), nil
}

// Write writes content to path atomically (parents are created). WithMode sets the mode
// (default 0644).
func (f *Files) Write(ctx context.Context, path string, content []byte, opts ...CallOption) error {
	o := collect(opts)
	p, err := filePath(path)
	if err != nil {
		return err
	}
	q := url.Values{}
	if o.mode != "" {
		if !fileMode.MatchString(o.mode) {
			return newErr(KindConfig, nil, "file mode %q is not an octal mode like 0644", o.mode)
		}
		q.Set("mode", o.mode)
	}
	if content == nil {
		content = []byte{}
	}
	resp, err := f.s.send(ctx, request{method: http.MethodPut, path: p, query: q, body: content,
		header: http.Header{"Content-Type": {"application/octet-stream"}}, timeout: o.timeout,
		what: fmt.Sprintf("writing %s in sandbox %s/%s", path, f.s.namespace, f.s.name)})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Read returns the content of the file at path.
func (f *Files) Read(ctx context.Context, path string, opts ...CallOption) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := f.ReadTo(ctx, path, &buf, opts...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReadTo streams the file at path into w and returns the number of bytes written.
func (f *Files) ReadTo(ctx context.Context, path string, w io.Writer, opts ...CallOption) (int64, error) {
	o := collect(opts)
	p, err := filePath(path)
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("reading %s in sandbox %s/%s", path, f.s.namespace, f.s.name)
	resp, err := f.s.send(ctx, request{method: http.MethodGet, path: p, timeout: o.timeout, what: what})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return 0, &Error{Kind: KindRequest, StatusCode: 400, Code: "IS_A_DIRECTORY",
			Message: fmt.Sprintf("%s: %s is a directory; use List", what, path)}
	}
	if o.maxBytes > 0 && resp.ContentLength > o.maxBytes {
		return 0, newErr(KindTooLarge, nil, "%s: %s is %d bytes, more than the limit of %d (WithMaxBytes); pass a larger limit or read it in parts", what, path, resp.ContentLength, o.maxBytes)
	}
	src := io.Reader(resp.Body)
	if o.maxBytes > 0 {
		src = io.LimitReader(resp.Body, o.maxBytes+1)
	}
	n, err := io.Copy(w, src)
	if o.maxBytes > 0 && n > o.maxBytes {
		return n, newErr(KindTooLarge, nil, "%s: %s is larger than the limit of %d (WithMaxBytes); pass a larger limit or read it in parts", what, path, o.maxBytes)
	}
	if err != nil {
		return n, newErr(KindStream, err, "%s: the transfer was cut off after %d bytes: %v; read it again", what, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, newErr(KindStream, nil, "%s: got %d of %d bytes; read it again", what, n, resp.ContentLength)
	}
	return n, nil
}

// List returns the entries of the directory at path, sorted by name.
func (f *Files) List(ctx context.Context, path string, opts ...CallOption) ([]FileEntry, error) {
	o := collect(opts)
	if path == "" {
		path = "."
	}
	p, err := filePath(path)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("listing %s in sandbox %s/%s", path, f.s.namespace, f.s.name)
	resp, err := f.s.send(ctx, request{method: http.MethodGet, path: p, timeout: o.timeout, what: what})
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		resp.Body.Close()
		return nil, &Error{Kind: KindRequest, StatusCode: 400, Code: "NOT_A_DIRECTORY",
			Message: fmt.Sprintf("%s: %s is a file, not a directory; use Read", what, path)}
	}
	var out struct {
		Entries []FileEntry `json:"entries"`
	}
	if err := readJSON(resp, what, &out); err != nil {
		return nil, err
	}
	for i := range out.Entries {
		out.Entries[i].Modified, _ = time.Parse(time.RFC3339, out.Entries[i].ModifiedAt)
	}
	return out.Entries, nil
}

// Exists reports whether path exists (a file or a directory).
func (f *Files) Exists(ctx context.Context, path string, opts ...CallOption) (bool, error) {
	o := collect(opts)
	p, err := filePath(path)
	if err != nil {
		return false, err
	}
	resp, err := f.s.send(ctx, request{method: http.MethodHead, path: p, timeout: o.timeout, ok: []int{200, 404},
		what: fmt.Sprintf("checking %s in sandbox %s/%s", path, f.s.namespace, f.s.name)})
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == 200, nil
}

// Delete removes path; a non-empty directory needs recursive.
func (f *Files) Delete(ctx context.Context, path string, recursive bool, opts ...CallOption) error {
	o := collect(opts)
	p, err := filePath(path)
	if err != nil {
		return err
	}
	q := url.Values{}
	if recursive {
		q.Set("recursive", "true")
	}
	resp, err := f.s.send(ctx, request{method: http.MethodDelete, path: p, query: q, timeout: o.timeout,
		what: fmt.Sprintf("deleting %s in sandbox %s/%s", path, f.s.namespace, f.s.name)})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
