// Package upstream finds and reads the source of the kube-proxy release this repository
// pins, for the tests that hold switchyard to it (its flags, its configuration fields, its
// metrics). k8s.io/kubernetes cannot be imported into this module (see
// hack/controlplane/go.mod), so those tests parse its source from the module cache.
package upstream

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// ModuleDir is the directory of module in the module cache, at the version the go.mod in
// dir requires; it is downloaded when missing.
func ModuleDir(dir, module string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = dir
	// hack/controlplane is a module of its own; a go.work above must not merge it.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if err == nil {
		err = json.Unmarshal(out, &info)
	}
	if err != nil || info.Dir == "" {
		return "", fmt.Errorf("locating %s's source (go mod download in %s): %v %s", module, dir, err, info.Error)
	}
	return info.Dir, nil
}

// KubernetesDir is the source of k8s.io/kubernetes at the version hack/controlplane pins,
// the kube-proxy switchyard is held to. root is the repository's root.
func KubernetesDir(root string) (string, error) {
	return ModuleDir(filepath.Join(root, "hack/controlplane"), "k8s.io/kubernetes")
}

// StringConstants are the string constants of the Go package in dir, by name, typed or
// not.
func StringConstants(dir string) (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	consts := map[string]string{}
	for _, path := range files {
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return nil, err
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						consts[name.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
	}
	return consts, nil
}

// StringValue is the value of a string literal, or of a constant among consts (as
// StringConstants reads them); false for anything else.
func StringValue(e ast.Expr, consts map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if s, err := strconv.Unquote(e.Value); err == nil && e.Kind == token.STRING {
			return s, true
		}
	case *ast.Ident:
		s, ok := consts[e.Name]
		return s, ok
	}
	return "", false
}
