"""Offline tests of the connection settings (dtee/connect.py): AMQP node lists, Redis Cluster
URLs and TLS files. The live cluster path runs in deploy/local/test-cluster.sh, which runs the
conformance suite against a TLS RabbitMQ cluster and Redis Cluster."""

from __future__ import annotations

import unittest

import redis
from redis.cluster import RedisCluster

import dtee
from dtee.connect import amqp_parameters, amqp_urls, get_many, is_cluster_url, parse_cluster_url, redis_client


class AmqpSettings(unittest.TestCase):
    def test_a_comma_list_is_split_and_trimmed(self):
        self.assertEqual(
            amqp_urls(" amqp://a@h1:5672/%2f, amqps://a@h2:5671/%2f ,"),
            ["amqp://a@h1:5672/%2f", "amqps://a@h2:5671/%2f"],
        )
        self.assertEqual(amqp_urls(["amqp://u@x/v"]), ["amqp://u@x/v"])

    def test_bad_settings_are_refused(self):
        for setting in ("", " , ", "http://u:p@h/", []):
            with self.subTest(setting=setting), self.assertRaises(ValueError):
                amqp_urls(setting)
        with self.assertRaises(ValueError) as raised:
            amqp_urls("https://u:secret@h/")
        self.assertNotIn("secret", str(raised.exception))

    def test_every_node_names_the_same_tenant(self):
        with self.assertRaisesRegex(ValueError, "different users"):
            amqp_parameters("amqp://alice:p@h1/%2f,amqp://bob:p@h2/%2f", dtee.Tls(), "t")

    def test_amqps_gets_a_verifying_context_and_the_host_name(self):
        plain, secure = amqp_parameters("amqp://u:p@h1:5672/%2f,amqps://u:p@h2:5671/%2f", dtee.Tls(), "t")
        self.assertIsNone(plain.ssl_options)
        self.assertEqual(secure.ssl_options.server_hostname, "h2")
        self.assertTrue(secure.ssl_options.context.check_hostname)
        self.assertEqual((secure.host, secure.port), ("h2", 5671))

    def test_a_certificate_needs_its_key(self):
        with self.assertRaises(ValueError):
            dtee.Tls(cert_file="client.pem")
        with self.assertRaises(ValueError):
            dtee.Tls(key_file="client.key")


class RedisSettings(unittest.TestCase):
    def test_cluster_urls_are_recognised(self):
        self.assertTrue(is_cluster_url("redis+cluster://h:1"))
        self.assertTrue(is_cluster_url(" RediSS+Cluster://h:1"))
        self.assertFalse(is_cluster_url("redis://h:1"))
        self.assertFalse(is_cluster_url("rediss://h:1"))

    def test_a_cluster_url_gives_its_seed_nodes_and_credentials(self):
        parsed = parse_cluster_url("rediss+cluster://dtee-worker:p%40ss@10.0.0.1:7001, node-b:7002,[::1]:7003,node-c/")
        self.assertEqual(parsed.nodes, [("10.0.0.1", 7001), ("node-b", 7002), ("::1", 7003), ("node-c", 6379)])
        self.assertEqual((parsed.username, parsed.password, parsed.tls), ("dtee-worker", "p@ss", True))
        anonymous = parse_cluster_url("redis+cluster://h:1")
        self.assertEqual((anonymous.username, anonymous.password, anonymous.tls), (None, None, False))

    def test_bad_cluster_urls_are_refused(self):
        for url in ("redis://h:1", "redis+cluster://", "redis+cluster://h:port", "redis+cluster://h:0", "redis+cluster://u:p@,"):
            with self.subTest(url=url), self.assertRaises(ValueError):
                parse_cluster_url(url)

    def test_a_single_node_url_gives_a_plain_client(self):
        client = redis_client("redis://127.0.0.1:1/", dtee.Tls())
        self.assertIsInstance(client, redis.Redis)
        self.assertNotIsInstance(client, RedisCluster)
        self.assertEqual(get_many(client, []), [])
        client.close()


class NackBackoff(unittest.TestCase):
    def test_resends_back_off_fourfold_up_to_five_seconds(self):
        from dtee.client import nack_backoff

        self.assertEqual([nack_backoff(n) for n in (1, 2, 3, 4, 5)], [0.1, 0.4, 1.6, 5.0, 5.0])


if __name__ == "__main__":
    unittest.main()
