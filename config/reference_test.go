package config

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	"github.com/switchyard/switchyard/internal/upstream"
)

// TestReferenceFields checks that Fields lists every field of kube-proxy's
// KubeProxyConfiguration, found by walking the type, and nothing else.
func TestReferenceFields(t *testing.T) {
	var upstream []string
	walkFields(reflect.TypeFor[kpv1alpha1.KubeProxyConfiguration](), "", &upstream)
	compareNames(t, "KubeProxyConfiguration field", upstream, names(Fields))
}

// walkFields appends the JSON path of every leaf field of t: a struct is walked into
// unless it decodes itself from JSON (metav1.Duration, resource.QuantityValue), as the
// file's reader sees it; inline fields (TypeMeta) belong to their parent.
func walkFields(t reflect.Type, prefix string, out *[]string) {
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if name == "" && f.Anonymous {
			walkFields(ft, prefix, out)
			continue
		}
		path := prefix + name
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(reflect.TypeFor[json.Unmarshaler]()) {
			walkFields(ft, path+".", out)
			continue
		}
		*out = append(*out, path)
	}
}

// TestReferenceFlags checks that Flags lists every flag of kube-proxy's command line on
// Linux and nothing else, and that what it says about parsing matches switchyard's own
// flag set. kube-proxy's package cannot be imported here (k8s.io/kubernetes stays out of
// this module, see hack/controlplane/go.mod), so its flags are read from its source: the
// fs.*Var calls of the functions that define them, in the module versions this
// repository pins.
func TestReferenceFlags(t *testing.T) {
	kubernetes, err := upstream.KubernetesDir("..")
	if err != nil {
		t.Fatal(err)
	}
	componentBase := moduleDir(t, ".", "k8s.io/component-base")
	// The file types come from k8s.io/kube-proxy v0.X.Y, the flags from k8s.io/kubernetes
	// v1.X.Y: they must be the same release.
	if kv, cv := filepath.Base(kubernetes), filepath.Base(componentBase); strings.TrimPrefix(kv, "kubernetes@v1.") != strings.TrimPrefix(cv, "component-base@v0.") {
		t.Fatalf("%s and %s are different Kubernetes releases: bump them together", kv, cv)
	}
	app := filepath.Join(kubernetes, "cmd/kube-proxy/app")
	upstream := slices.Concat(
		flagNames(t, app, "options.go", "AddFlags"),
		flagNames(t, app, "init_linux.go", "addOSFlags"),
		// AddFlags ends with logsapi.AddFlags(&o.config.Logging, fs).
		flagNames(t, filepath.Join(componentBase, "logs/api/v1"), "options.go", "addFlags"),
		// Flags the command gets outside its options: cobra's --help, verflag's
		// --version, and Go's flag set (fs.AddGoFlagSet(goflag.CommandLine) in
		// NewProxyCommand), where cadvisor's machine package registers two. Checked
		// against `kube-proxy --help` of v1.35.4.
		[]string{"help", "version", "boot-id-file", "machine-id-file"},
	)
	compareNames(t, "kube-proxy flag", upstream, names(Flags))

	fs := newFlagSet(newOptions(), modeNames)
	for _, s := range Flags {
		// pflag answers --help itself without defining it.
		defined := fs.Lookup(s.Name) != nil || s.Name == "help"
		if defined == (s.Support == Unparsed) {
			t.Errorf("--%s is %q in the reference, but switchyard defined=%v", s.Name, s.Support, defined)
		}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(upstream, f.Name) && !slices.Contains(names(OwnFlags), f.Name) {
			t.Errorf("switchyard's --%s is neither a kube-proxy flag nor in OwnFlags", f.Name)
		}
	})
}

// TestReferenceDocIsCurrent checks that docs/configuration.md is what the reference
// tables generate.
func TestReferenceDocIsCurrent(t *testing.T) {
	var want bytes.Buffer
	if err := WriteReference(&want); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("docs/configuration.md is stale: run `go run ./hack/configdoc`")
	}
}

func names(settings []Setting) []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.Name
	}
	return out
}

// compareNames reports what upstream has and the reference lacks, and the other way
// round, and names listed twice.
func compareNames(t *testing.T, what string, upstream, listed []string) {
	t.Helper()
	for _, n := range upstream {
		if !slices.Contains(listed, n) {
			t.Errorf("%s %q has no entry in config/reference.go: classify it", what, n)
		}
	}
	seen := map[string]bool{}
	for _, n := range listed {
		if !slices.Contains(upstream, n) {
			t.Errorf("config/reference.go lists %s %q, which kube-proxy does not have", what, n)
		}
		if seen[n] {
			t.Errorf("config/reference.go lists %s %q twice", what, n)
		}
		seen[n] = true
	}
}

// moduleDir is upstream.ModuleDir, failing the test when the module cannot be found.
func moduleDir(t *testing.T, dir, module string) string {
	t.Helper()
	d, err := upstream.ModuleDir(dir, module)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// flagNames are the names of the flags that function fn of file defines with fs.*Var
// and fs.*VarP calls; a name given as a constant is looked up among the package's.
func flagNames(t *testing.T, dir, file, fn string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join(dir, file), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var body *ast.BlockStmt
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == fn {
			body = fd.Body
		}
	}
	if body == nil {
		t.Fatalf("%s: no func %s: kube-proxy's flags moved", file, fn)
	}
	var out []string
	ast.Inspect(body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !isIdent(sel.X, "fs") || !(strings.HasSuffix(sel.Sel.Name, "Var") || strings.HasSuffix(sel.Sel.Name, "VarP")) {
			return true
		}
		// Every *Var and *VarP function takes the name second.
		if len(call.Args) < 2 {
			t.Fatalf("%s: fs.%s with %d arguments", fset.Position(call.Pos()), sel.Sel.Name, len(call.Args))
		}
		out = append(out, stringValue(t, fset, dir, call.Args[1]))
		return true
	})
	return out
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// stringValue is the value of a string literal, or of a string constant of the package
// in dir.
func stringValue(t *testing.T, fset *token.FileSet, dir string, e ast.Expr) string {
	t.Helper()
	if s, ok := upstream.StringValue(e, packageConstants(t, dir)); ok {
		return s
	}
	t.Fatalf("%s: cannot read a flag name from %T", fset.Position(e.Pos()), e)
	return ""
}

// packageConstants are the string constants of the package in dir.
func packageConstants(t *testing.T, dir string) map[string]string {
	t.Helper()
	consts, err := upstream.StringConstants(dir)
	if err != nil {
		t.Fatal(err)
	}
	return consts
}

// TestGates checks the gates the reference names: kube-proxy has each, those switchyard
// refuses enabled are off by default (or switchyard would refuse to start by default),
// and those said locked are; and the generated gates are those of the kube-proxy this
// repository pins (after bumping it, run hack/controlplane/featuregates again).
func TestGates(t *testing.T) {
	kubernetes := moduleDir(t, "../hack/controlplane", "k8s.io/kubernetes")
	if pinned := strings.TrimPrefix(filepath.Base(kubernetes), "kubernetes@"); kubeProxyGatesSource != pinned {
		t.Errorf("zz_generated.featuregates.go has kube-proxy %s's gates, hack/controlplane pins %s: regenerate it", kubeProxyGatesSource, pinned)
	}
	defaults := newFeatureGate()
	for _, g := range Gates {
		if _, ok := kubeProxyGates[g.Gate]; !ok {
			t.Errorf("gate %s is not kube-proxy's", g.Gate)
			continue
		}
		if g.Refused != "" && defaults.Enabled(g.Gate) {
			t.Errorf("gate %s is refused enabled, and is enabled by default", g.Gate)
		}
		flipped := newFeatureGate().SetFromMap(map[string]bool{string(g.Gate): !defaults.Enabled(g.Gate)})
		if locked := flipped != nil && strings.Contains(flipped.Error(), "is locked"); locked != g.Locked {
			t.Errorf("gate %s: locked %t, the reference says %t", g.Gate, locked, g.Locked)
		}
	}
}
