package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

func accessFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "allow", Usage: "serve only clients at these addresses: `CIDR` or IP (repeatable; unix-socket clients are governed by --socket-mode)", EnvVars: []string{"NBDD_ALLOW"}},
	}
}

// parsePrefixes parses CIDR prefixes and bare addresses (a /32 or /128).
func parsePrefixes(what string, vals []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vals {
		for _, f := range strings.Split(v, " ") { // NBDD_ALLOW="10.0.0.0/8 192.168.1.7"
			if f == "" {
				continue
			}
			if p, err := netip.ParsePrefix(f); err == nil {
				out = append(out, p.Masked())
				continue
			}
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, usage("%s %q: want an address or CIDR prefix such as 192.168.1.0/24 or fd00::/8", what, f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	return out, nil
}

// configureAccess applies --allow.
func (cfg *config) configureAccess(c *cli.Context) error {
	addrs, err := parsePrefixes("--allow", c.StringSlice("allow"))
	cfg.srv.Access.Addrs = addrs
	return err
}

// exportAccess is the Access of an export's allow= and tls-allow=
// options.
func (cfg *config) exportAccess(spec exportSpec) (server.Access, error) {
	addrs, err := parsePrefixes(fmt.Sprintf("export %s: allow=", quoteShort(spec.name)), spec.lists["allow"])
	if err != nil {
		return server.Access{}, err
	}
	names := spec.lists["tls-allow"]
	if len(names) > 0 && (cfg.srv.TLSConfig == nil || cfg.srv.TLSConfig.ClientCAs == nil) {
		return server.Access{}, usage("export %s: tls-allow= needs --tls on or require and --tls-ca: client certificates are matched by name only once the CA has verified them", quoteShort(spec.name))
	}
	return server.Access{Addrs: addrs, CertNames: names}, nil
}
