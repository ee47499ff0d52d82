// Package deploy holds the manifests that install switchyard in a cluster. They are
// embedded so that the tests apply exactly the files an operator applies.
package deploy

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

//go:embed *.yaml
var manifests embed.FS

// Files are the manifests, in the order they are applied: the identity and the
// configuration before the DaemonSet that uses them.
var Files = []string{"rbac.yaml", "config.yaml", "daemonset.yaml"}

// Objects decodes the named manifests (all of Files when none are named), in order.
func Objects(files ...string) ([]*unstructured.Unstructured, error) {
	if len(files) == 0 {
		files = Files
	}
	var objs []*unstructured.Unstructured
	for _, name := range files {
		data, err := fs.ReadFile(manifests, name)
		if err != nil {
			return nil, fmt.Errorf("reading deploy/%s: %w", name, err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for i := 0; ; i++ {
			obj := &unstructured.Unstructured{}
			err := dec.Decode(&obj.Object)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("deploy/%s, document %d: %w", name, i+1, err)
			}
			if len(obj.Object) > 0 {
				objs = append(objs, obj)
			}
		}
	}
	return objs, nil
}

// Apply applies objs to the cluster with server-side apply, as `kubectl apply
// --server-side` does. With dryRun the apiserver validates and admits each object
// (schema, defaults, admission plugins) without storing it.
func Apply(ctx context.Context, config *rest.Config, objs []*unstructured.Unstructured, dryRun bool) error {
	disc, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return err
	}
	opts := metav1.ApplyOptions{FieldManager: "switchyard-deploy", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		var resource dynamic.ResourceInterface = client.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			resource = client.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := resource.Apply(ctx, obj.GetName(), obj, opts); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}
