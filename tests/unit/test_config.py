"""Config resolution (option > env > default) and validation naming the variable."""

from typing import Mapping

import pytest

from ironfunctions.config import Config, default_max_concurrency, with_backlog
from ironfunctions.listen import listen_is_local, parse_endpoint
from ironfunctions.errors import ConfigError


def make(options: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None) -> Config:
    return Config.from_sources(options or {}, env or {}, "/srv", cpu_count=2, host_memory_mb=24000)


def test_defaults_are_the_embedded_setup() -> None:
    c = make()
    assert c.port == 8080
    assert c.listen == "tcp:8080:interface=127.0.0.1:backlog=4096"
    assert c.db_url == "sqlite:////srv/data/ironfunctions.db"
    assert c.mq_url == "sqlite:////srv/data/mq.db"
    assert c.api_url == "http://127.0.0.1:8080"
    assert (c.log_level, c.jwt_auth_key, c.docker_network) == ("info", "", "ironfunctions")
    assert c.num_async == 4
    assert c.max_request_size == c.max_response_size == 6 * 1024 * 1024
    assert (c.async_max_attempts, c.async_retry_delay) == (3, 1.0)
    assert c.max_concurrency == default_max_concurrency(2, 24000) == 64


def test_option_wins_over_env_and_env_over_default() -> None:
    assert make(env={"PORT": "9000"}).port == 9000
    assert make({"port": "9001"}, {"PORT": "9000"}).port == 9001
    c = make(env={"PORT": "9000"})
    assert c.listen == "tcp:9000:interface=127.0.0.1:backlog=4096" and c.api_url == "http://127.0.0.1:9000"
    assert make({"log-level": "DEBUG"}, {"LOG_LEVEL": "error"}).log_level == "debug"
    assert make(env={"DATA_DIR": "/d"}).db_url == "sqlite:////d/ironfunctions.db"


def test_listen_gets_a_backlog_big_enough_for_a_burst_of_clients() -> None:
    """Twisted's default backlog (50) made the kernel reset connections of a burst of
    500 concurrent calls instead of letting the node answer them 503 (bench/cold_load.py)."""
    assert make(env={"LISTEN": "tcp:81:interface=127.0.0.1"}).listen == "tcp:81:interface=127.0.0.1:backlog=4096"
    assert with_backlog("tcp6:81:interface=\\:\\:1") == "tcp6:81:interface=\\:\\:1:backlog=4096"
    assert with_backlog("unix:/run/if.sock") == "unix:/run/if.sock:backlog=4096"
    assert with_backlog("tcp:81:backlog=10") == "tcp:81:backlog=10"
    assert with_backlog("tcp:81:interface=\\:\\:1:backlog=10") == "tcp:81:interface=\\:\\:1:backlog=10"
    assert with_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"
    assert with_backlog("ssl:443:privateKey=k.pem") == "ssl:443:privateKey=k.pem"


def test_empty_values_mean_default() -> None:
    assert make(env={"PORT": "", "LOG_LEVEL": " "}).port == 8080


def test_sizes_and_durations_accept_units() -> None:
    c = make(env={"MAX_REQUEST_SIZE": "1MiB", "MAX_RESPONSE_SIZE": "512k", "ASYNC_RETRY_DELAY": "250ms"})
    assert (c.max_request_size, c.max_response_size, c.async_retry_delay) == (1048576, 524288, 0.25)


@pytest.mark.parametrize(
    "variable,value",
    [
        ("PORT", "0"), ("PORT", "x"), ("DB_URL", "mysql://h/db"), ("DB_URL", "sqlite://"),
        ("MQ_URL", "amqp://h"), ("API_URL", "ftp://x"), ("LOG_LEVEL", "verbose"),
        ("NUM_ASYNC", "-1"), ("MAX_CONCURRENCY", "-3"), ("MAX_REQUEST_SIZE", "big"),
        ("STATSD_URL", "tcp://h:1"), ("STATSD_URL", "udp://h"), ("DOCKER_NETWORK", "a b"),
        ("NODE_ID", "no/slash"), ("ASYNC_MAX_ATTEMPTS", "0"), ("ASYNC_RETRY_DELAY", "soon"),
        ("HOT_TRANSPORT", "pipe"), ("FUNCTION_ALLOW_NETS", "10.0.0.0/33"),
        ("FUNCTION_ALLOW_NETS", "10.1.2.3/8"), ("FUNCTION_ALLOW_NETS", "10.0.0.0/8,nope"),
        ("HOT_TRANSPORT", "pipe"), ("API_AUTH", "off"), ("JWT_AUTH_KEY", "s3cret-ab"), ("LISTEN", ":80"),
    ],
)
def test_invalid_values_raise_ConfigError_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        make(env={variable: value})
    assert str(e.value).startswith(variable + ":")


def test_errors_never_show_a_password() -> None:
    with pytest.raises(ConfigError) as e:
        make(env={"DB_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


def test_hot_transport_defaults_to_socket_and_accepts_attach() -> None:
    assert make().hot_transport == "socket"
    assert make(env={"HOT_TRANSPORT": "Socket"}).hot_transport == "socket"
    assert make(env={"HOT_TRANSPORT": "attach"}).hot_transport == "attach"
    assert make({"hot-transport": "attach"}, {"HOT_TRANSPORT": "socket"}).hot_transport == "attach"


def test_function_containers_default_to_a_read_only_root_and_the_images_user() -> None:
    c = make()
    assert (c.function_readonly_rootfs, c.function_user) == (True, "")
    assert make(env={"FUNCTION_READONLY_ROOTFS": "false"}).function_readonly_rootfs is False
    assert make({"function-readonly-rootfs": "TRUE"}, {"FUNCTION_READONLY_ROOTFS": "0"}).function_readonly_rootfs


@pytest.mark.parametrize("value, user", [("1000", "1000:1000"), ("1000:100", "1000:100"), (" 65534:0 ", "65534:0")])
def test_function_user_is_a_numeric_uid_and_gid_which_defaults_to_the_uid(value: str, user: str) -> None:
    """Without a gid Docker would run a uid missing from the image's /etc/passwd in group 0."""
    assert make(env={"FUNCTION_USER": value}).function_user == user


@pytest.mark.parametrize(
    "variable, value",
    [
        ("FUNCTION_READONLY_ROOTFS", "maybe"), ("FUNCTION_USER", "nobody"), ("FUNCTION_USER", "0"),
        ("FUNCTION_USER", "0:1000"), ("FUNCTION_USER", "1000:"), ("FUNCTION_USER", "-1"),
        ("FUNCTION_USER", "4294967295"), ("FUNCTION_USER", "1000:1000:1"),
    ],
)
def test_invalid_function_settings_raise_ConfigError_naming_the_variable(variable: str, value: str) -> None:
    """A user name is refused too: it would be looked up in the image's own /etc/passwd."""
    with pytest.raises(ConfigError) as e:
        make(env={variable: value})
    assert str(e.value).startswith(variable + ":")


def test_function_allow_nets_are_parsed_cidrs_of_both_families() -> None:
    assert make().function_allow_nets == ()
    c = make(env={"FUNCTION_ALLOW_NETS": " 10.213.0.0/16, fd00::/64 ,"})
    assert c.function_allow_nets == ("10.213.0.0/16", "fd00::/64")


KEY = "k" * 32


@pytest.mark.parametrize("listen", [
    "tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.1.2.3", "tcp:8080:127.0.0.1",
    "tcp6:8080:interface=\\:\\:1", "TCP:8080:interface=127.0.0.1:backlog=10",
    "ssl:443:privateKey=k.pem:interface=127.0.0.1", "ssl:443:k.pem:c.pem:TLSv1_2_METHOD:127.0.0.1",
    "unix:/run/ironfunctions.sock", "unix:address=/run/if.sock:mode=600",
])
def test_loopback_and_unix_listens_are_local(listen: str) -> None:
    assert listen_is_local(listen)


@pytest.mark.parametrize("listen", [
    "tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp:8080:interface=10.0.0.5", "tcp:8080:0.0.0.0",
    "tcp6:8080", "tcp6:8080:interface=\\:\\:", "tcp6:8080:interface=\\:\\:ffff\\:127.0.0.1",
    "tcp:8080:interface=localhost", "tcp:8080:interface=", "ssl:443:privateKey=k.pem",
    "systemd:domain=INET:index=0", "le:/certs:tcp:443:interface=127.0.0.1", "onion:80",
    # An escaped colon is part of the value, not a separator: this interface is "127.0.0.1:x".
    "tcp:8080:interface=127.0.0.1\\:x",
])
def test_other_listens_reach_the_network(listen: str) -> None:
    assert not listen_is_local(listen)


def test_endpoint_strings_are_parsed_as_twisted_does() -> None:
    assert parse_endpoint("tcp6:80:interface=\\:\\:1:backlog=5") == (["tcp6", "80"], {"interface": "::1", "backlog": "5"})
    assert parse_endpoint("unix:/a\\:b") == (["unix", "/a:b"], {})


def test_the_default_listen_is_loopback_and_needs_no_key() -> None:
    c = make()
    assert listen_is_local(c.listen) and c.jwt_auth_key == "" and c.api_auth == "jwt"
    assert not c.open_api_on_network


def test_a_network_listen_without_a_key_is_refused_naming_both_ways_out() -> None:
    for env in ({"LISTEN": "tcp:8080"}, {"LISTEN": "tcp:8080:interface=0.0.0.0"}, {"LISTEN": "systemd:domain=INET:index=0"}):
        with pytest.raises(ConfigError) as e:
            make(env=env)
        message = str(e.value)
        assert message.startswith("LISTEN:") and "\n" not in message
        assert "JWT_AUTH_KEY" in message and "API_AUTH=none" in message


def test_a_network_listen_is_served_with_a_key_or_with_api_auth_none() -> None:
    c = make(env={"LISTEN": "tcp:8080", "JWT_AUTH_KEY": KEY})
    assert c.jwt_auth_key == KEY and not c.open_api_on_network
    c = make(env={"LISTEN": "tcp:8080", "API_AUTH": "none"})
    assert c.api_auth == "none" and c.open_api_on_network
    assert make({"api-auth": "NONE", "listen": "tcp:8080"}).open_api_on_network


def test_a_short_key_is_a_config_error_that_never_shows_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        make(env={"JWT_AUTH_KEY": "nine-byte"})
    assert str(e.value).startswith("JWT_AUTH_KEY:") and "32" in str(e.value) and "nine-byte" not in str(e.value)
    assert make(env={"JWT_AUTH_KEY": "é" * 16}).jwt_auth_key == "é" * 16  # 32 bytes in UTF-8


def test_bounds_and_outage_settings_have_the_spec_defaults() -> None:
    """SPEC §2: the settings of §8 (hostile load) and §10 (backend outages)."""
    c = make()
    assert (c.header_timeout, c.idle_timeout, c.body_min_rate) == (20.0, 60.0, 1024)
    assert (c.max_buffered, c.max_spooled) == (64 * 1024 * 1024, 1024 * 1024 * 1024)
    assert (c.admission_wait, c.admission_max_waiting) == (10.0, 1000)
    assert c.app_concurrency == 32  # half of MAX_CONCURRENCY (64)
    assert (c.async_max_queued, c.async_max_queued_bytes) == (10_000, 256 * 1024 * 1024)
    assert (c.async_max_age, c.call_retention) == (86400.0, 7 * 86400.0)
    assert (c.route_cache_stale, c.record_buffer) == (600.0, 64 * 1024 * 1024)


def test_bounds_settings_parse_units() -> None:
    c = make(env={
        "HEADER_TIMEOUT": "5s", "IDLE_TIMEOUT": "2m", "BODY_MIN_RATE": "2KiB/s", "MAX_BUFFERED": "1MiB",
        "ASYNC_MAX_AGE": "1h", "CALL_RETENTION": "30d", "ROUTE_CACHE_STALE": "0", "ADMISSION_WAIT": "250ms",
        "APP_MAX_CONCURRENCY": "3", "MAX_CONCURRENCY": "2",
    })
    assert (c.header_timeout, c.idle_timeout, c.body_min_rate, c.max_buffered) == (5.0, 120.0, 2048, 1024 * 1024)
    assert (c.async_max_age, c.call_retention, c.route_cache_stale) == (3600.0, 30 * 86400.0, 0.0)
    assert c.admission_wait == 0.25
    assert c.app_concurrency == 3
    assert make(env={"MAX_CONCURRENCY": "1"}).app_concurrency == 1


@pytest.mark.parametrize("name, value", [
    ("HEADER_TIMEOUT", "0"), ("IDLE_TIMEOUT", "soon"), ("BODY_MIN_RATE", "fast"), ("MAX_SPOOLED", "-1"),
    ("ASYNC_MAX_QUEUED", "0"), ("ASYNC_MAX_AGE", "1y"), ("APP_MAX_CONCURRENCY", "0"),
    ("ADMISSION_MAX_WAITING", "-3"), ("RECORD_BUFFER", "lots"),
])
def test_bad_bounds_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        make(env={name: value})


def test_production_settings() -> None:
    c = make()
    assert (c.lb_agent_port, c.trusted_proxies, c.drain_grace, c.shutdown_timeout) == (0, (), 3.0, 60.0)
    c = make(env={"LB_AGENT_PORT": "9101", "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1", "DRAIN_GRACE": "0",
                  "SHUTDOWN_TIMEOUT": "90s"})
    assert c.lb_agent_port == 9101 and c.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32", "::1/128")
    assert (c.drain_grace, c.shutdown_timeout) == (0.0, 90.0)
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        make(env={"TRUSTED_PROXIES": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="LB_AGENT_PORT"):
        make(env={"LB_AGENT_PORT": "70000"})
