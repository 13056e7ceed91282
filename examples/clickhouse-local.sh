#!/bin/bash
# A two-shard ClickHouse cluster with ZooKeeper on loopback, for trying the ClickHouse backend
# and for examples/clickhouse_bench.rs (docs/CLICKHOUSE.md). Debian packages: clickhouse-server,
# zookeeper, a Java runtime. Runs as root (the servers drop to nobody); stop with
#   kill $(cat DIR/*.pid)
# Usage: examples/clickhouse-local.sh DIR [HTTP_BASE=18120]
set -eu
dir=$(realpath -m "$1")
base=${2:-18120}
mkdir -p "$dir/zk/data"
chmod 755 "$dir"
cat > "$dir/zk/zoo.cfg" <<EOF
tickTime=2000
dataDir=$dir/zk/data
clientPort=$((base + 61))
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr
EOF
java -Xmx256m -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar "-Dzookeeper.log.dir=$dir/zk" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zk/zoo.cfg" > "$dir/zk/out.log" 2>&1 &
echo $! > "$dir/zk.pid"
until (exec 3<>/dev/tcp/127.0.0.1/$((base + 61)) && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null | grep -q standalone; do
    sleep 0.2
done

cat > "$dir/users.xml" <<EOF
<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
<profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
EOF
for i in 1 2; do
    s="$dir/ch$i"
    mkdir -p "$s/data" "$s/tmp" "$s/log"
    cat > "$s/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>$s/log/server.log</log><errorlog>$s/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$((base + i))</http_port><tcp_port>$((base + 10 + i))</tcp_port>
  <interserver_http_port>$((base + 20 + i))</interserver_http_port><interserver_http_host>127.0.0.1</interserver_http_host>
  <path>$s/data/</path><tmp_path>$s/tmp/</tmp_path>
  <users_config>$dir/users.xml</users_config><default_profile>default</default_profile>
  <default_database>default</default_database><mark_cache_size>268435456</mark_cache_size>
  <zookeeper><node><host>127.0.0.1</host><port>$((base + 61))</port></node></zookeeper>
  <macros><replica>r1</replica><shard>$i</shard></macros>
  <remote_servers><dnsledger>
    <shard><replica><host>127.0.0.1</host><port>$((base + 11))</port></replica></shard>
    <shard><replica><host>127.0.0.1</host><port>$((base + 12))</port></replica></shard>
  </dnsledger></remote_servers>
</yandex>
EOF
    chown -R 65534:65534 "$s"
    setpriv --reuid 65534 --regid 65534 --clear-groups /usr/sbin/clickhouse-server --config-file="$s/config.xml" \
        > "$s/out.log" 2>&1 &
    echo $! > "$dir/ch$i.pid"
done
for i in 1 2; do
    until curl -sf "http://127.0.0.1:$((base + i))/ping" > /dev/null; do sleep 0.2; done
done
cat > "$dir/clickhouse.toml" <<EOF
[clickhouse]
shards = ["http://127.0.0.1:$((base + 1))", "http://127.0.0.1:$((base + 2))"]
cluster = "dnsledger"
database = "dnsledger"
EOF
echo "cluster up: $dir/clickhouse.toml"
