// Command checker opens an eStargz or zstd:chunked blob with the reference reader (stargz-snapshotter's
// estargz package, Debian's 0.12), verifies the TOC digest and every chunk digest, and prints a JSON listing
// of every entry as the reader sees it, with the sha256 of each regular file's bytes read through the reader.
//
// Build (GOPATH mode, against Debian's golang-github-containerd-stargz-snapshotter-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o checker main.go
//
// Usage: checker -blob layer.blob -toc-digest sha256:...   (exit 1 and a message on stderr on any failure)
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
)

type entry struct {
	Name      string            `json:"name"`
	Type      string            `json:"type"`
	Mode      int64             `json:"mode"`
	UID       int               `json:"uid"`
	GID       int               `json:"gid"`
	UserName  string            `json:"userName"`
	GroupName string            `json:"groupName"`
	LinkName  string            `json:"linkName"`
	Xattrs    map[string][]byte `json:"xattrs"`
	DevMajor  int               `json:"devMajor"`
	DevMinor  int               `json:"devMinor"`
	Size      int64             `json:"size"`
	SHA256    string            `json:"sha256,omitempty"`
	ModTime   string            `json:"modtime"`
	Chunks    int               `json:"chunks"`
	NumLink   int               `json:"numLink"`
}

type report struct {
	TOCDigest string  `json:"tocDigest"`
	Entries   []entry `json:"entries"`
}

type checker struct {
	r        *estargz.Reader
	verifier estargz.TOCEntryVerifier
	out      []entry
}

func main() {
	blobPath := flag.String("blob", "", "path of the blob")
	tocDigest := flag.String("toc-digest", "", "expected TOC digest (sha256:...)")
	flag.Parse()
	if err := run(*blobPath, *tocDigest); err != nil {
		fmt.Fprintf(os.Stderr, "checker: %v\n", err)
		os.Exit(1)
	}
}

func run(blobPath, tocDigest string) error {
	f, err := os.Open(blobPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	want, err := digest.Parse(tocDigest)
	if err != nil {
		return fmt.Errorf("bad -toc-digest: %v", err)
	}
	sr := io.NewSectionReader(f, 0, st.Size())
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		return fmt.Errorf("estargz.Open: %v", err)
	}
	v, err := r.VerifyTOC(want)
	if err != nil {
		return fmt.Errorf("VerifyTOC: %v", err)
	}
	c := &checker{r: r, verifier: v}
	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("no root directory")
	}
	if err := c.visit("", root); err != nil {
		return err
	}
	if err := c.walk("", root, 0); err != nil {
		return err
	}
	sort.Slice(c.out, func(i, j int) bool { return c.out[i].Name < c.out[j].Name })
	return json.NewEncoder(os.Stdout).Encode(report{TOCDigest: r.TOCDigest().String(), Entries: c.out})
}

func (c *checker) walk(dir string, d *estargz.TOCEntry, depth int) error {
	if depth > 4096 {
		return fmt.Errorf("directory tree deeper than 4096 under %q (a cycle?)", dir)
	}
	var err error
	d.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
		full := path.Join(dir, base)
		if err = c.visit(full, ent); err != nil {
			return false
		}
		if ent.Type == "dir" && ent.Name == full {
			err = c.walk(full, ent, depth+1)
		}
		return err == nil
	})
	return err
}

func (c *checker) visit(full string, ent *estargz.TOCEntry) error {
	e := entry{
		Name: full, Type: ent.Type, Mode: ent.Mode, UID: ent.UID, GID: ent.GID,
		UserName: ent.Uname, GroupName: ent.Gname, LinkName: ent.LinkName, Xattrs: ent.Xattrs,
		DevMajor: ent.DevMajor, DevMinor: ent.DevMinor, ModTime: ent.ModTime3339, NumLink: ent.NumLink,
	}
	if ent.Name != full {
		// The reader resolves a hard link to its target's entry: report it as a link to that name.
		e.Type, e.LinkName = "hardlink", ent.Name
	}
	if ent.Type == "reg" {
		e.Size = ent.Size
		sum, chunks, err := c.readVerified(ent)
		if err != nil {
			return fmt.Errorf("%s: %v", full, err)
		}
		e.SHA256, e.Chunks = sum, chunks
	}
	c.out = append(c.out, e)
	return nil
}

// readVerified reads the file chunk by chunk through the reader and checks each chunk against its TOC digest.
func (c *checker) readVerified(ent *estargz.TOCEntry) (string, int, error) {
	fr, err := c.r.OpenFile(ent.Name)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	var off int64
	chunks := 0
	for off < ent.Size {
		ce, ok := c.r.ChunkEntryForOffset(ent.Name, off)
		if !ok {
			return "", 0, fmt.Errorf("no chunk at offset %d", off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			return "", 0, fmt.Errorf("chunk at %d has offset %d size %d", off, ce.ChunkOffset, ce.ChunkSize)
		}
		buf := make([]byte, ce.ChunkSize)
		n, err := fr.ReadAt(buf, ce.ChunkOffset)
		if int64(n) != ce.ChunkSize {
			return "", 0, fmt.Errorf("short read of chunk at %d: %d of %d bytes: %v", off, n, ce.ChunkSize, err)
		}
		v, err := c.verifier.Verifier(ce)
		if err != nil {
			return "", 0, err
		}
		v.Write(buf)
		if !v.Verified() {
			return "", 0, fmt.Errorf("chunk at offset %d does not match its chunkDigest", off)
		}
		h.Write(buf)
		off += ce.ChunkSize
		chunks++
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if ent.Digest != "" && ent.Digest != sum {
		return "", 0, fmt.Errorf("file digest %s, TOC says %s", sum, ent.Digest)
	}
	return sum, chunks, nil
}
