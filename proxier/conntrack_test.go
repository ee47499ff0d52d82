package proxier

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/conntrack/conntracktest"
)

// TestStaleUDPFlows checks which UDP flows a sync deletes, as kube-proxy's
// CleanStaleEntries decides: those to a changed port's addresses that none of its serving
// endpoints answers, never the flows the endpoints still answer (a restart re-reads every
// port, and must not cut live flows), and nothing for a port left without an endpoint.
// Each deletion is observed in kube-proxy's conntrack reconciler metrics: its duration,
// and the entries it deleted.
func TestStaleUDPFlows(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.1:53")
	nodePort := netip.MustParseAddrPort("192.0.2.1:30053")
	epA, epB := netip.MustParseAddrPort("10.244.1.2:5353"), netip.MustParseAddrPort("10.244.2.2:5353")
	udp := func(dst, replySrc netip.AddrPort) conntrack.Entry {
		return conntrack.Entry{Protocol: v1.ProtocolUDP, OrigDst: dst, ReplySrc: replySrc}
	}
	dns := makeService("dns", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, NodePort: 30053, Protocol: v1.ProtocolUDP}}
	})
	slice := func(ips ...string) *discovery.EndpointSlice {
		var eps []discovery.Endpoint
		for _, ip := range ips {
			eps = append(eps, readyEndpoint(ip, ""))
		}
		return makeSlice("dns", "dns-1", eps, func(s *discovery.EndpointSlice) {
			s.Ports = []discovery.EndpointPort{{Name: ptr("dns"), Port: ptr[int32](5353), Protocol: ptr(v1.ProtocolUDP)}}
		})
	}
	live := []conntrack.Entry{udp(vip, epA), udp(nodePort, epA)}
	stale := []conntrack.Entry{
		udp(vip, epB),      // to an endpoint that is gone
		udp(vip, vip),      // created while the Service rejected it
		udp(nodePort, epB), // to a gone endpoint through the NodePort
	}
	unrelated := []conntrack.Entry{
		{Protocol: v1.ProtocolTCP, OrigDst: vip, ReplySrc: epB},
		udp(netip.MustParseAddrPort("10.96.0.2:53"), epB),
	}
	tests := []struct {
		name string
		// before runs and syncs first, with the table empty.
		before []proxierEvent
		events []proxierEvent
		// refused makes the kernel refuse the port's rules in the sync of events: its
		// flows must then stay until the retry that programs it.
		refused bool
		want    []conntrack.Entry
		// wantRuns is how many deletions ran, wantDeleted the entries they deleted.
		wantRuns    uint64
		wantDeleted float64
	}{
		{
			name:        "first sync after a restart: only the flows no endpoint answers go",
			events:      []proxierEvent{svcEvent(dns), sliceEvent(slice("10.244.1.2")), initialized()},
			want:        append(append([]conntrack.Entry{}, live...), unrelated...),
			wantRuns:    1,
			wantDeleted: 3,
		},
		{
			name:        "an endpoint replaced: the flows to the old one go",
			before:      []proxierEvent{svcEvent(dns), sliceEvent(slice("10.244.2.2")), initialized()},
			events:      []proxierEvent{sliceEvent(slice("10.244.1.2"))},
			want:        append(append([]conntrack.Entry{}, live...), unrelated...),
			wantRuns:    2,
			wantDeleted: 3,
		},
		{
			// Deleted while the old rules still DNAT, a flow would be created again
			// through them.
			name:        "an endpoint replaced while the kernel refuses the port: the flows go once the retry programs it",
			before:      []proxierEvent{svcEvent(dns), sliceEvent(slice("10.244.2.2")), initialized()},
			events:      []proxierEvent{sliceEvent(slice("10.244.1.2"))},
			refused:     true,
			want:        append(append([]conntrack.Entry{}, live...), unrelated...),
			wantRuns:    2,
			wantDeleted: 3,
		},
		{
			// kube-proxy leaves the flows of a port without serving endpoints alone.
			name:     "the last endpoint removed: nothing goes",
			before:   []proxierEvent{svcEvent(dns), sliceEvent(slice("10.244.1.2")), initialized()},
			events:   []proxierEvent{sliceEvent(slice())},
			want:     append(append(append([]conntrack.Entry{}, live...), stale...), unrelated...),
			wantRuns: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxier(t)
			table := conntracktest.NewFake()
			tp.p.opts.Conntrack = table
			if len(tc.before) > 0 {
				for _, e := range tc.before {
					e(tp)
				}
				if err := tp.p.sync(); err != nil {
					t.Fatal(err)
				}
			}
			table.Add(false, live...)
			table.Add(false, stale...)
			table.Add(false, unrelated...)
			for _, e := range tc.events {
				e(tp)
			}
			sort := cmpopts.SortSlices(func(a, b conntrack.Entry) bool {
				return a.OrigDst.String()+a.ReplySrc.String() < b.OrigDst.String()+b.ReplySrc.String()
			})
			if tc.refused {
				tp.backend.errs = []error{PortErrors{spn("dns", "dns", v1.ProtocolUDP): errors.New("refused")}}
				if err := tp.p.sync(); err == nil {
					t.Fatal("sync with a refused port succeeded")
				}
				all := append(append(append([]conntrack.Entry{}, live...), stale...), unrelated...)
				if diff := cmp.Diff(all, table.Entries(false), sort, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
					t.Errorf("conntrack entries after the refused sync (-want +got):\n%s", diff)
				}
			}
			if err := tp.p.sync(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, table.Entries(false), sort, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("conntrack entries after the sync (-want +got):\n%s", diff)
			}
			if runs, _ := histogramSample(t, tp.reg, "kubeproxy_conntrack_reconciler_sync_duration_seconds"); runs != tc.wantRuns {
				t.Errorf("conntrack reconciler runs = %d, want %d", runs, tc.wantRuns)
			}
			if got := counterValue(t, tp.reg, "kubeproxy_conntrack_reconciler_deleted_entries_total"); got != tc.wantDeleted {
				t.Errorf("conntrack reconciler deleted entries = %v, want %v", got, tc.wantDeleted)
			}
		})
	}
}
