// Command configdoc writes docs/configuration.md, the reference of every kube-proxy flag
// and KubeProxyConfiguration field and what switchyard does with it, from the tables in
// config/reference.go; package config's tests fail when the file is stale.
//
//	go run ./hack/configdoc -out docs/configuration.md
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/switchyard/switchyard/config"
)

func main() {
	out := flag.String("out", "docs/configuration.md", "Markdown file to write")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "configdoc:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := config.WriteReference(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return f.Close()
}
