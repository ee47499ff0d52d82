package ipvs

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TestIpsetPortRequest: a bitmap:port member goes to the kernel as its port alone. The
// protocol netlink's IpsetAdd adds to every port is no attribute of that type, and a
// kernel that checks requests strictly refuses the whole request for it.
func TestIpsetPortRequest(t *testing.T) {
	for _, cmd := range []int{nl.IPSET_CMD_ADD, nl.IPSET_CMD_DEL} {
		msg := ipsetPortRequest(cmd, "SWYD-HEALTH-CHECK-NODE-PORT", 32001).Serialize()
		if typ := binary.NativeEndian.Uint16(msg[4:6]); typ != uint16(unix.NFNL_SUBSYS_IPSET<<8|cmd) {
			t.Errorf("command %d: message type %#x", cmd, typ)
		}
		// The netlink header (16 bytes) and the netfilter one (4) come before the attributes.
		got := map[uint16]string{}
		var data []nl.Attribute
		for a := range nl.ParseAttributes(msg[unix.SizeofNlMsghdr+4:]) {
			if a.Type&^uint16(nl.NLA_F_NESTED) == nl.IPSET_ATTR_DATA {
				for d := range nl.ParseAttributes(a.Value) {
					data = append(data, d)
				}
				continue
			}
			got[a.Type] = string(a.Value)
		}
		want := map[uint16]string{nl.IPSET_ATTR_PROTOCOL: string([]byte{nl.IPSET_PROTOCOL}), nl.IPSET_ATTR_SETNAME: "SWYD-HEALTH-CHECK-NODE-PORT\x00"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("command %d: attributes (-want +got):\n%s", cmd, diff)
		}
		wantData := []nl.Attribute{{Type: nl.IPSET_ATTR_PORT | uint16(nl.NLA_F_NET_BYTEORDER), Value: []byte{32001 >> 8, 32001 & 0xff}}}
		if diff := cmp.Diff(wantData, data); diff != "" {
			t.Errorf("command %d: the member's attributes (-want +got):\n%s", cmd, diff)
		}
	}
}

// TestSetByName: each of our sets is found by its name in either family, as the rules
// name it, and a set that is not ours is not.
func TestSetByName(t *testing.T) {
	for set, typ := range setTypes {
		for _, name := range []string{set, set + "-6"} {
			gotSet, gotType, ok := SetByName(name)
			if !ok || gotSet != set || gotType != typ {
				t.Errorf("SetByName(%s) = %s, %s, %v; want %s, %s", name, gotSet, gotType, ok, set, typ)
			}
		}
	}
	if set, _, ok := SetByName("KUBE-CLUSTER-IP"); ok {
		t.Errorf("SetByName(KUBE-CLUSTER-IP) found %s", set)
	}
}
