// A minimal containerd-stargz-grpc for the lazy-pull e2e test: stargz-snapshotter's own library (Debian's
// golang-github-containerd-stargz-snapshotter-dev, 0.12) behind containerd's snapshot gRPC API on a unix socket.
// Debian packages the library but not this command, so the test builds this file (tests/support/stargz.py).
// Only what the test needs: a TOML config (fs + resolver sections), docker config.json credentials, the
// in-memory metadata store. SIGTERM/SIGINT unmount every FUSE layer (snapshotter Close) before exiting.
package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve containerd's snapshot API on")
	root := flag.String("root", "", "state directory (snapshots, FUSE mountpoints, cache)")
	configPath := flag.String("config", "", "TOML config: stargz-snapshotter's fs options and [resolver]")
	flag.Parse()
	if *address == "" || *root == "" {
		log.L.Fatal("-address and -root are required")
	}
	logrus.SetLevel(logrus.DebugLevel) // the test reads what was fetched from this log
	ctx := log.WithLogger(context.Background(), log.L)

	var config service.Config
	if *configPath != "" {
		tree, err := toml.LoadFile(*configPath)
		if err != nil {
			log.L.WithError(err).Fatal("reading the config")
		}
		if err := tree.Unmarshal(&config); err != nil {
			log.L.WithError(err).Fatal("parsing the config")
		}
	}
	if err := os.MkdirAll(*root, 0700); err != nil {
		log.L.WithError(err).Fatal("creating the root")
	}
	snapshotter, err := service.NewStargzSnapshotterService(ctx, *root, &config,
		service.WithCredsFuncs(dockerconfig.NewDockerconfigKeychain(ctx)))
	if err != nil {
		log.L.WithError(err).Fatal("starting the snapshotter")
	}

	if err := os.MkdirAll(filepath.Dir(*address), 0700); err != nil {
		log.L.WithError(err).Fatal("creating the socket directory")
	}
	os.Remove(*address) // a stale socket from a killed run
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.L.WithError(err).Fatal("listening")
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(snapshotter))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		rpc.Stop()
	}()
	if err := rpc.Serve(listener); err != nil {
		log.L.WithError(err).Error("serving")
	}
	if err := snapshotter.Close(); err != nil { // unmounts every layer, committed ones too
		log.L.WithError(err).Error("closing the snapshotter")
	}
	log.L.Info("stopped")
}
