//! The bus contract suite at the AMQP level: every test body runs twice, against broker-mem in
//! process and against a real RabbitMQ (3.10+) through lapin, with identical expectations.
//! Where they differ, broker-mem is wrong (or the difference is listed, with its reason, in
//! broker-mem/README.md).
//!
//! RabbitMQ runs in a vhost of the test's own (`ports::testing::RabbitVhost`), deleted at the
//! end, so the tests run in parallel on one broker. Without a reachable RabbitMQ its half prints
//! `SKIPPED: ...` and passes, unless `WARREN_REQUIRE_RABBITMQ=1`.

#[path = "contract/harness.rs"]
mod harness;

use broker_mem::{FieldTable, FieldValue, Properties};
use harness::{Amqp, Next, QFlags, Reply, XFlags, i, norm, s, table, vhost_of};

/// Runs one test body on both brokers.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn broker_mem() {
                let mut broker = super::harness::Mem::new();
                super::$name(&mut broker).await;
                broker.broker.check_invariants().expect("broker-mem bookkeeping");
            }

            #[tokio::test]
            async fn broker_mem_wire() {
                let mut broker = super::harness::Rabbit::wire().await;
                super::$name(&mut broker).await;
                let engine = broker.wired_broker().expect("a wire run").clone();
                broker.finish().await;
                engine.check_invariants().expect("broker-mem bookkeeping");
            }

            #[tokio::test]
            async fn rabbitmq() {
                let Some(mut broker) = super::harness::Rabbit::create(stringify!($name)).await
                else {
                    return;
                };
                super::$name(&mut broker).await;
                broker.finish().await;
            }
        }
    )*};
}

contract!(
    default_exchange_routes_by_queue_name,
    direct_exchange_routes_on_the_exact_key,
    fanout_reaches_each_bound_queue_once,
    topic_wildcards_match_words,
    headers_exchange_matches_all_or_any,
    exchange_to_exchange_bindings_route_once_per_queue,
    alternate_exchange_takes_what_its_exchange_cannot_route,
    internal_exchange_refuses_publishes,
    mandatory_unroutable_message_is_returned_before_the_ack,
    publishing_to_a_missing_exchange_is_404_and_closes_the_channel,
    exclusive_queue_is_locked_to_its_connection_and_goes_with_it,
    auto_delete_queue_goes_with_its_last_consumer,
    server_named_queues_start_with_amq_gen,
    passive_declare_of_a_missing_queue_is_404,
    redeclaring_with_other_flags_or_arguments_is_406,
    purge_drops_ready_messages_only,
    delete_if_unused_and_if_empty_refuse_with_406,
    unbind_stops_routing,
    exchange_unbind_stops_routing,
    an_empty_queue_name_means_the_channels_last_declared_queue,
    names_lose_their_cr_and_lf_where_rabbitmq_strips_them,
    every_vhost_starts_with_rabbitmqs_system_exchanges,
    a_reused_consumer_tag_closes_the_connection_before_the_queue_is_looked_up,
    exchange_delete_if_unused_and_missing,
    queue_ttl_expires_messages_into_the_dead_letter_exchange,
    per_message_expiration_expires_at_the_head,
    an_expired_message_behind_a_delivered_one_is_dropped_not_delivered,
    max_length_drops_the_head_and_dead_letters_it,
    a_message_over_the_limit_on_its_own_still_reaches_a_waiting_consumer,
    a_requeue_past_the_length_limit_drops_the_head_unless_publishes_are_refused,
    a_requeue_past_the_limit_drops_in_rabbitmqs_order_and_a_quorum_queue_delivers_first,
    a_quorum_queue_dead_letters_what_one_return_drops_last_first,
    max_length_bytes_with_reject_publish_nacks_the_publisher,
    rejected_message_is_dead_lettered_with_x_death,
    dead_letter_routing_key_replaces_the_key,
    a_cancelled_quorum_consumer_counts_until_its_deliveries_are_settled,
    a_quorum_queue_counts_unsettled_gets_and_only_its_active_consumer,
    a_quorum_queue_expires_once_nothing_holds_it_and_declares_do_not_renew_it,
    quorum_queue_counts_deliveries_and_enforces_the_limit,
    competing_consumers_get_round_robin,
    a_quorum_consumer_given_credit_back_rejoins_the_round_robin_at_the_back,
    prefetch_is_per_consumer,
    global_prefetch_is_shared_by_the_channel,
    a_per_consumer_qos_lifts_the_global_limit,
    a_global_limit_counts_the_unacked_gets_it_finds_and_never_their_acks,
    a_global_limit_counts_quorum_deliveries_only_when_they_are_acked,
    a_global_limit_reached_holds_no_ack_consumers_back_too,
    a_commit_tells_the_limiter_of_its_acks_together,
    exclusive_consumer_keeps_others_out,
    a_quorum_queue_ignores_consumer_exclusivity,
    a_connection_error_returns_the_failing_channels_messages_first,
    basic_get_takes_one_message_with_the_count_left,
    ack_multiple_settles_every_tag_up_to_it,
    requeued_messages_go_back_to_their_original_position,
    recover_requeues_every_unacked_delivery_of_the_channel,
    a_channel_returns_each_consumers_messages_in_its_own_batch,
    a_multiple_nack_puts_gets_back_before_a_consumers_deliveries,
    a_classic_queue_sends_a_consumer_it_found_without_credit_to_the_back,
    unknown_or_double_ack_is_406_and_closes_the_channel,
    closing_a_channel_requeues_but_cancel_does_not,
    closing_a_connection_requeues,
    deleting_a_queue_cancels_its_consumers,
    properties_and_headers_arrive_intact,
    header_values_keep_their_amqp_types,
    headers_match_by_value_and_arguments_by_type_class,
    dead_letter_cycles_without_a_rejection_are_dropped,
    reject_publish_dlx_nacks_and_dead_letters,
    a_requeued_message_keeps_its_expiry,
    a_classic_queue_drops_a_message_with_a_ttl_of_0_that_comes_back,
    a_publish_reaches_its_queues_before_the_dead_letters_it_causes,
    redeclaring_an_exchange_with_another_alternate_is_406,
    nack_multiple_requeues_in_order_and_auto_ack_ignores_prefetch,
    single_active_consumer_takes_everything_until_it_goes,
    a_single_active_consumer_queue_refuses_exclusive_consumers,
    the_next_single_active_consumer_is_chosen_by_priority_on_a_classic_queue,
    a_quorum_single_active_consumer_stays_active_when_its_credit_comes_back,
    priority_queue_delivers_higher_priorities_first,
    queue_expires_when_unused,
    priority_and_single_active_arguments_are_checked,
    headers_exchange_with_x_matches_x_headers_too,
    consumer_priorities_feed_the_highest_with_credit_first,
    quorum_queues_refuse_a_consumer_under_global_qos_and_ignore_one_set_later,
    cc_and_bcc_headers_add_routing_keys,
    a_cc_route_keeps_a_message_from_the_alternate_exchange,
    dead_lettering_reroutes_by_cc_unless_the_queue_names_a_key,
    dead_lettering_reroutes_by_bcc_too,
    transactions_hold_publishes_until_commit_and_drop_them_on_rollback,
    a_transactional_publish_finds_the_default_exchanges_queue_at_the_commit,
    a_commit_a_queue_refuses_in_part_does_the_rest_and_closes_the_channel,
    a_full_quorum_queue_drops_a_commits_publish_and_the_commit_is_ok,
    a_commit_delivers_its_publishes_one_by_one_and_expired_ones_take_no_room,
    transactional_settles_apply_at_commit_and_return_on_rollback,
    queue_arguments_are_validated_in_rabbitmqs_order_with_its_texts,
    quorum_queues_send_nacked_messages_back_and_serve_returns_first,
    redeclaring_compares_the_arguments_rabbitmq_compares_in_its_order,
    quorum_queue_length_limits_are_soft_and_reject_publish_dlx_drops_the_head,
    a_full_quorum_queue_stops_the_publishers_it_knows_and_asks_about_new_ones,
    system_exchanges_argument_types_and_auto_delete_exchanges,
    consume_arguments_of_another_queue_type_are_refused,
    expiration_is_read_as_rabbitmq_reads_it,
    a_delivery_mode_other_than_1_or_2_is_406,
    another_connection_may_publish_to_an_exclusive_queue_but_not_touch_it,
    direct_reply_to_carries_replies_to_the_requesting_channel,
    direct_reply_to_refuses_what_rabbitmq_refuses,
    a_quorum_get_with_manual_ack_counts_the_expired_message_behind_it,
    a_quorum_queue_keeps_what_it_dead_letters_at_least_once_toward_its_limit,
);

async fn nack_multiple_requeues_in_order_and_auto_ack_ignores_prefetch(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..4 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(b.next(sub).await.msg().tag);
    }
    b.cancel(ch, sub).await.unwrap();
    b.nack(ch, tags[2], true, true).await.unwrap();
    b.reject(ch, tags[3], false).await.unwrap();
    let mut got = Vec::new();
    while let Some((msg, _)) = b.get(ch, "q", true).await.unwrap() {
        got.push((msg.text(), msg.redelivered));
    }
    let expected: Vec<(String, bool)> = ["0", "1", "2"]
        .into_iter()
        .map(|t| (t.to_owned(), true))
        .collect();
    assert_eq!(got, expected);
    // Prefetch does not limit an auto-ack consumer.
    b.qos(ch, 1, false).await.unwrap();
    for n in 0..3 {
        b.send(ch, "", "q", &format!("a{n}")).await;
    }
    let auto = b.consume(ch, "q", "auto", true, false).await.unwrap();
    for n in 0..3 {
        assert_eq!(b.next(auto).await.msg().text(), format!("a{n}"));
    }
}

async fn dead_letter_cycles_without_a_rejection_are_dropped(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    // Expired messages go back to the same queue through the default exchange: a cycle.
    let args = table(&[("x-message-ttl", i(100)), ("x-dead-letter-exchange", s(""))]);
    b.queue_declare(ch, "loop", QFlags::default(), args)
        .await
        .unwrap();
    b.send(ch, "", "loop", "m").await;
    b.sleep_ms(600).await;
    assert_eq!(b.depth("loop").await, Some(0));
    // A rejection is not a cycle: rejected into itself, it comes back with an x-death entry.
    let args = table(&[("x-dead-letter-exchange", s(""))]);
    b.queue_declare(ch, "retry", QFlags::default(), args)
        .await
        .unwrap();
    b.send(ch, "", "retry", "r").await;
    let (first, _) = b.get(ch, "retry", false).await.unwrap().unwrap();
    b.reject(ch, first.tag, false).await.unwrap();
    let (again, _) = b.get(ch, "retry", true).await.unwrap().unwrap();
    assert_eq!(
        deaths(&again),
        [death(1, "rejected", "retry", "", &["retry"])]
    );
    assert!(!again.redelivered);
}

async fn reject_publish_dlx_nacks_and_dead_letters(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let args = table(&[
        ("x-max-length", i(1)),
        ("x-overflow", s("reject-publish-dlx")),
    ]);
    dead_letter_setup(b, ch, "q", args).await;
    b.send(ch, "", "q", "kept").await;
    let p = b
        .publish(ch, "", "q", false, Properties::default(), "refused")
        .await
        .unwrap();
    assert!(!p.acked);
    assert_eq!(b.drain(ch, "q").await, ["kept"]);
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(dead.text(), "refused");
    assert_eq!(deaths(&dead), [death(1, "maxlen", "q", "", &["q"])]);
}

async fn a_requeued_message_keeps_its_expiry(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "q", table(&[("x-message-ttl", i(300))])).await;
    b.send(ch, "", "q", "m").await;
    let (msg, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    b.sleep_ms(400).await;
    // Requeued after its TTL ran out: it expires at once instead of being delivered again.
    b.nack(ch, msg.tag, false, true).await.unwrap();
    assert_eq!(b.depth_becomes("q", Some(0)).await, Some(0));
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(deaths(&dead), [death(1, "expired", "q", "", &["q"])]);
}

/// A classic queue checks a message's TTL on its way back from a consumer, on a clock that has
/// moved on since it arrived (RabbitMQ's is in microseconds; probed on 3.10.8): with
/// `x-message-ttl` 0, a message a consumer took as it arrived and nacks is dead-lettered, not
/// redelivered, even when nothing else happened in between (broker-mem's clock, in
/// milliseconds, has not moved here: it redelivered).
async fn a_classic_queue_drops_a_message_with_a_ttl_of_0_that_comes_back(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "q", table(&[("x-message-ttl", i(0))])).await;
    b.qos(ch, 1, false).await.unwrap();
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    b.send(ch, "", "q", "m").await;
    let Next::Msg(msg) = b.next(sub).await else {
        panic!("the consumer waiting is handed the message as it arrives");
    };
    b.nack(ch, msg.tag, false, true).await.unwrap();
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    assert_eq!(b.depth_becomes("q", Some(0)).await, Some(0));
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(deaths(&dead), [death(1, "expired", "q", "", &["q"])]);
}

/// A queue dead-letters after the publish that made it drop has reached every queue it routes
/// to (RabbitMQ's queues dead-letter on their own; found by the differential test): here the
/// publish's own copy fills `target`, so the head `source` drops is refused there, and the
/// publish is confirmed. (broker-mem put the dead letter in first and nacked the publish.)
async fn a_publish_reaches_its_queues_before_the_dead_letters_it_causes(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let full_at_one = table(&[("x-max-length", i(1)), ("x-overflow", s("reject-publish"))]);
    b.queue_declare(ch, "target", QFlags::default(), full_at_one)
        .await
        .unwrap();
    let source = table(&[
        ("x-max-length", i(1)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("target")),
    ]);
    b.queue_declare(ch, "source", QFlags::default(), source)
        .await
        .unwrap();
    b.send(ch, "", "source", "old").await;
    let to_both = Properties {
        headers: Some(table(&[("CC", FieldValue::Array(vec![s("target")]))])),
        ..Properties::default()
    };
    let published = b
        .publish(ch, "", "source", false, to_both, "new")
        .await
        .unwrap();
    assert!(published.acked);
    // RabbitMQ dead-letters in the background.
    b.sleep_ms(100).await;
    assert_eq!(b.drain(ch, "target").await, ["new"]);
    assert_eq!(b.drain(ch, "source").await, ["new"]);
}

async fn redeclaring_an_exchange_with_another_alternate_is_406(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let args = table(&[("alternate-exchange", s("ae1"))]);
    b.exchange_declare(ch, "x", "direct", XFlags::default(), args.clone())
        .await
        .unwrap();
    b.exchange_declare(ch, "x", "direct", XFlags::default(), args)
        .await
        .unwrap();
    let other = table(&[("alternate-exchange", s("ae2"))]);
    let error = b
        .exchange_declare(ch, "x", "direct", XFlags::default(), other)
        .await
        .unwrap_err();
    assert_eq!((error.code, norm(&error.text)), (406, "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': received 'ae2' but current is 'ae1'".to_owned()));
    // On a redeclare a value of another type is compared, not refused as a new exchange's
    // would be (probed on 3.10.8), and a missing one is described with its type.
    let ch = b.channel(c).await;
    b.exchange(ch, "plain", "direct").await;
    let redeclares = [
        (
            "x",
            table(&[("alternate-exchange", i(1))]),
            "received '1' but current is 'ae1'",
        ),
        (
            "x",
            FieldTable::new(),
            "received none but current is the value 'ae1' of type 'longstr'",
        ),
        (
            "plain",
            table(&[("alternate-exchange", FieldValue::Bool(true))]),
            "received the value 'true' of type 'bool' but current is none",
        ),
    ];
    for (exchange, args, why) in redeclares {
        let ch = b.channel(c).await;
        let error = b
            .exchange_declare(ch, exchange, "direct", XFlags::default(), args)
            .await
            .unwrap_err();
        assert_eq!(
            (error.code, norm(&error.text)),
            (
                406,
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{exchange}' in vhost '/': {why}"
                )
            )
        );
    }
    b.exchange_delete(ch, "plain", false).await.unwrap();
}

async fn default_exchange_routes_by_queue_name(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.send(ch, "", "q", "one").await;
    b.send(ch, "", "nowhere", "lost").await;
    let (msg, left) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!(
        (
            msg.text().as_str(),
            msg.exchange.as_str(),
            msg.routing_key.as_str(),
            left
        ),
        ("one", "", "q", 0)
    );
}

async fn direct_exchange_routes_on_the_exact_key(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    for q in ["a", "b", "c"] {
        b.queue(ch, q).await;
    }
    b.bind(ch, "a", "x", "k").await;
    b.bind(ch, "b", "x", "k").await;
    b.bind(ch, "c", "x", "other").await;
    b.send(ch, "x", "k", "m").await;
    assert_eq!(
        [b.depth("a").await, b.depth("b").await, b.depth("c").await],
        [Some(1), Some(1), Some(0)]
    );
}

async fn fanout_reaches_each_bound_queue_once(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "fanout").await;
    b.queue(ch, "a").await;
    b.queue(ch, "b").await;
    b.bind(ch, "a", "x", "k1").await;
    b.bind(ch, "a", "x", "k2").await;
    b.bind(ch, "b", "x", "").await;
    b.send(ch, "x", "whatever", "m").await;
    assert_eq!([b.depth("a").await, b.depth("b").await], [Some(1), Some(1)]);
}

async fn topic_wildcards_match_words(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "t", "topic").await;
    let bindings = [
        ("star", "a.*.c"),
        ("hash", "a.#"),
        ("all", "#"),
        ("mid", "a.#.c"),
        ("exact", "a.b"),
        ("one", "*"),
    ];
    for (q, pattern) in bindings {
        b.queue(ch, q).await;
        b.bind(ch, q, "t", pattern).await;
    }
    // A queue bound by two matching patterns still gets one copy.
    b.bind(ch, "hash", "t", "a.b.#").await;
    for key in ["a.b.c", "a", "a.c", "axb", "", "a.b", "b"] {
        b.send(ch, "t", key, key).await;
    }
    let mut got = Vec::new();
    for (q, _) in bindings {
        got.push((q, b.drain(ch, q).await));
    }
    let expected = [
        ("star", vec!["a.b.c"]),
        ("hash", vec!["a.b.c", "a", "a.c", "a.b"]),
        ("all", vec!["a.b.c", "a", "a.c", "axb", "", "a.b", "b"]),
        ("mid", vec!["a.b.c", "a.c"]),
        ("exact", vec!["a.b"]),
        ("one", vec!["a", "axb", "b"]),
    ];
    let expected: Vec<(&str, Vec<String>)> = expected
        .into_iter()
        .map(|(q, keys)| (q, keys.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(got, expected);
}

async fn headers_exchange_matches_all_or_any(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "h", "headers").await;
    b.queue(ch, "all").await;
    b.queue(ch, "any").await;
    b.queue(ch, "present").await;
    let all = table(&[("x-match", s("all")), ("kind", s("order")), ("n", i(1))]);
    let any = table(&[("x-match", s("any")), ("kind", s("order")), ("n", i(1))]);
    let present = table(&[("flag", FieldValue::Void)]);
    b.queue_bind(ch, "all", "h", "", all).await.unwrap();
    b.queue_bind(ch, "any", "h", "", any).await.unwrap();
    b.queue_bind(ch, "present", "h", "", present).await.unwrap();
    let cases = [
        ("both", table(&[("kind", s("order")), ("n", i(1))])),
        ("kind", table(&[("kind", s("order"))])),
        ("flag", table(&[("flag", s("x")), ("n", i(2))])),
        ("none", table(&[])),
    ];
    publish_with_headers(b, ch, "h", cases).await;
    assert_eq!(b.drain(ch, "all").await, ["both"]);
    assert_eq!(b.drain(ch, "any").await, ["both", "kind"]);
    assert_eq!(b.drain(ch, "present").await, ["flag"]);
}

/// Publishes each body with its headers to `exchange`, each confirmed.
async fn publish_with_headers<'a>(
    b: &mut impl Amqp,
    ch: harness::Ch,
    exchange: &str,
    cases: impl IntoIterator<Item = (&'a str, FieldTable)>,
) {
    for (body, headers) in cases {
        let properties = Properties {
            headers: Some(headers),
            ..Properties::default()
        };
        let published = b
            .publish(ch, exchange, "", false, properties, body)
            .await
            .unwrap();
        assert!(published.acked);
    }
}

async fn exchange_to_exchange_bindings_route_once_per_queue(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "front", "topic").await;
    b.exchange(ch, "back", "fanout").await;
    b.queue(ch, "q").await;
    b.queue(ch, "direct-too").await;
    b.exchange_bind(ch, "back", "front", "orders.#", FieldTable::new())
        .await
        .unwrap();
    b.bind(ch, "q", "back", "").await;
    // q is reachable twice (directly and through back): one copy.
    b.bind(ch, "q", "front", "orders.new").await;
    b.bind(ch, "direct-too", "front", "orders.*").await;
    // A loop between exchanges is walked once.
    b.exchange_bind(ch, "front", "back", "", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "front", "orders.new", "m").await;
    b.send(ch, "front", "other", "n").await;
    assert_eq!(b.drain(ch, "q").await, ["m"]);
    assert_eq!(b.drain(ch, "direct-too").await, ["m"]);
    let missing = b
        .exchange_bind(ch, "back", "nowhere", "", FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(missing.code, 404);
}

async fn alternate_exchange_takes_what_its_exchange_cannot_route(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "ae", "fanout").await;
    let args = table(&[("alternate-exchange", s("ae"))]);
    b.exchange_declare(ch, "main", "direct", XFlags::default(), args)
        .await
        .unwrap();
    b.queue(ch, "routed").await;
    b.queue(ch, "unrouted").await;
    b.bind(ch, "routed", "main", "k").await;
    b.bind(ch, "unrouted", "ae", "").await;
    b.send(ch, "main", "k", "routed").await;
    // Mandatory, but the alternate exchange routed it: not returned.
    let p = b
        .publish(ch, "main", "other", true, Properties::default(), "stray")
        .await
        .unwrap();
    assert_eq!(
        p,
        harness::Pub {
            returned: None,
            acked: true
        }
    );
    assert_eq!(b.drain(ch, "routed").await, ["routed"]);
    let (msg, _) = b.get(ch, "unrouted", true).await.unwrap().unwrap();
    assert_eq!(
        (
            msg.text().as_str(),
            msg.exchange.as_str(),
            msg.routing_key.as_str()
        ),
        ("stray", "main", "other")
    );
}

async fn internal_exchange_refuses_publishes(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let internal = XFlags {
        internal: true,
        ..XFlags::default()
    };
    b.exchange_declare(ch, "inner", "fanout", internal, FieldTable::new())
        .await
        .unwrap();
    b.exchange(ch, "outer", "fanout").await;
    b.exchange_bind(ch, "inner", "outer", "", FieldTable::new())
        .await
        .unwrap();
    b.queue(ch, "q").await;
    b.bind(ch, "q", "inner", "").await;
    b.send(ch, "outer", "", "via-outer").await;
    assert_eq!(b.depth("q").await, Some(1));
    let refused = b
        .publish(ch, "inner", "", false, Properties::default(), "direct")
        .await
        .unwrap_err();
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.text,
        "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'"
            .replace("'/'", "VHOST")
            .replace("VHOST", &vhost_of(&refused.text))
    );
    assert!(!b.channel_open(ch).await);
}

async fn mandatory_unroutable_message_is_returned_before_the_ack(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    let p = b
        .publish(ch, "x", "nowhere", true, Properties::default(), "m")
        .await
        .unwrap();
    assert_eq!(p.returned, Some((312, "NO_ROUTE".to_owned())));
    assert!(p.acked);
    let p = b
        .publish(ch, "x", "nowhere", false, Properties::default(), "m")
        .await
        .unwrap();
    assert_eq!(
        p,
        harness::Pub {
            returned: None,
            acked: true
        }
    );
}

async fn publishing_to_a_missing_exchange_is_404_and_closes_the_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let error = b
        .publish(ch, "missing", "k", false, Properties::default(), "m")
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            404,
            "NOT_FOUND - no exchange 'missing' in vhost '/'".to_owned()
        )
    );
    assert!(!b.channel_open(ch).await);
    let other = b.channel(c).await;
    b.queue(other, "still-works").await;
}

async fn exclusive_queue_is_locked_to_its_connection_and_goes_with_it(b: &mut impl Amqp) {
    let owner = b.connection().await;
    let ch = b.channel(owner).await;
    let exclusive = QFlags {
        exclusive: true,
        ..QFlags::default()
    };
    b.queue_declare(ch, "mine", exclusive, FieldTable::new())
        .await
        .unwrap();
    let other = b.connection().await;
    let och = b.channel(other).await;
    let error = b.consume(och, "mine", "", false, false).await.unwrap_err();
    assert_eq!(error.code, 405);
    assert!(
        norm(&error.text).starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
        ),
        "{}",
        error.text
    );
    b.close_connection(owner).await;
    assert_eq!(b.depth_becomes("mine", None).await, None);
}

async fn auto_delete_queue_goes_with_its_last_consumer(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let auto = QFlags {
        auto_delete: true,
        ..QFlags::default()
    };
    b.queue_declare(ch, "auto", auto, FieldTable::new())
        .await
        .unwrap();
    let first = b.consume(ch, "auto", "c1", false, false).await.unwrap();
    let second = b.consume(ch, "auto", "c2", false, false).await.unwrap();
    b.cancel(ch, first).await.unwrap();
    assert_eq!(b.depth("auto").await, Some(0));
    b.cancel(ch, second).await.unwrap();
    assert_eq!(b.depth_becomes("auto", None).await, None);
}

async fn server_named_queues_start_with_amq_gen(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let (name, _, _) = b
        .queue_declare(ch, "", QFlags::default(), FieldTable::new())
        .await
        .unwrap();
    assert!(name.starts_with("amq.gen-"), "{name}");
    b.send(ch, "", &name, "m").await;
    assert_eq!(b.depth(&name).await, Some(1));
    let reserved = b
        .queue_declare(ch, "amq.mine", QFlags::default(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(reserved.code, 403);
}

async fn passive_declare_of_a_missing_queue_is_404(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "here").await;
    b.send(ch, "", "here", "m").await;
    let passive = QFlags {
        passive: true,
        ..QFlags::default()
    };
    let (_, messages, consumers) = b
        .queue_declare(ch, "here", passive, FieldTable::new())
        .await
        .unwrap();
    assert_eq!((messages, consumers), (1, 0));
    let error = b
        .queue_declare(ch, "gone", passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (404, "NOT_FOUND - no queue 'gone' in vhost '/'".to_owned())
    );
    let ch = b.channel(c).await;
    let x = XFlags {
        passive: true,
        ..XFlags::default()
    };
    let error = b
        .exchange_declare(ch, "gone", "direct", x, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            404,
            "NOT_FOUND - no exchange 'gone' in vhost '/'".to_owned()
        )
    );
}

async fn redeclaring_with_other_flags_or_arguments_is_406(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let ttl = table(&[("x-message-ttl", i(1000))]);
    b.queue_declare(ch, "q", QFlags::default(), ttl.clone())
        .await
        .unwrap();
    b.queue_declare(ch, "q", QFlags::default(), ttl)
        .await
        .unwrap();
    let other = table(&[("x-message-ttl", i(2000))]);
    let error = b
        .queue_declare(ch, "q", QFlags::default(), other)
        .await
        .unwrap_err();
    assert_eq!(error.code, 406);
    assert_eq!(
        norm(&error.text),
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'"
    );
    let ch = b.channel(c).await;
    let error = b
        .queue_declare(ch, "q", QFlags::default(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        norm(&error.text),
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'long'"
    );
    let ch = b.channel(c).await;
    let durable = DURABLE;
    let error = b
        .queue_declare(ch, "q", durable, table(&[("x-message-ttl", i(1000))]))
        .await
        .unwrap_err();
    assert_eq!(
        norm(&error.text),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    let error = b
        .exchange_declare(ch, "x", "fanout", XFlags::default(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        norm(&error.text),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    // The queue and its state are unchanged by the refusals.
    let ch = b.channel(c).await;
    b.send(ch, "", "q", "m").await;
    assert_eq!(b.depth("q").await, Some(1));
}

async fn purge_drops_ready_messages_only(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..3 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let (held, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    assert_eq!(b.queue_purge(ch, "q").await.unwrap(), 2);
    assert_eq!(b.depth("q").await, Some(0));
    b.nack(ch, held.tag, false, true).await.unwrap();
    assert_eq!(b.drain(ch, "q").await, ["0"]);
}

async fn delete_if_unused_and_if_empty_refuse_with_406(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.send(ch, "", "q", "m").await;
    let error = b.queue_delete(ch, "q", false, true).await.unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            406,
            "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty".to_owned()
        )
    );
    let ch = b.channel(c).await;
    let _consumer = b.consume(ch, "q", "c", false, false).await.unwrap();
    let other = b.channel(c).await;
    let error = b.queue_delete(other, "q", true, false).await.unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            406,
            "PRECONDITION_FAILED - queue 'q' in vhost '/' in use".to_owned()
        )
    );
    // Both flags, both broken: `if-empty` is checked first.
    let busy = b.channel(c).await;
    b.queue(busy, "both").await;
    b.qos(busy, 1, false).await.unwrap();
    let _holder = b
        .consume(busy, "both", "holder", false, false)
        .await
        .unwrap();
    b.send(busy, "", "both", "held").await;
    b.send(busy, "", "both", "ready").await;
    assert_eq!(b.depth_becomes("both", Some(1)).await, Some(1));
    let other = b.channel(c).await;
    let error = b.queue_delete(other, "both", true, true).await.unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            406,
            "PRECONDITION_FAILED - queue 'both' in vhost '/' not empty".to_owned()
        )
    );
    let other = b.channel(c).await;
    b.queue(other, "empty").await;
    b.send(other, "", "empty", "a").await;
    b.send(other, "", "empty", "b").await;
    assert_eq!(
        b.queue_delete(other, "empty", false, false).await.unwrap(),
        2
    );
    assert_eq!(b.depth("empty").await, None);
    assert_eq!(
        b.queue_delete(other, "empty", false, false).await.unwrap(),
        0
    );
}

async fn unbind_stops_routing(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    b.queue(ch, "q").await;
    b.bind(ch, "q", "x", "k").await;
    b.send(ch, "x", "k", "before").await;
    b.queue_unbind(ch, "q", "x", "k", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "x", "k", "after").await;
    // Unbinding what is not bound is fine.
    b.queue_unbind(ch, "q", "x", "k", FieldTable::new())
        .await
        .unwrap();
    assert_eq!(b.drain(ch, "q").await, ["before"]);
    // So is unbinding from a missing exchange or a missing queue (RabbitMQ 3.10).
    b.queue_unbind(ch, "q", "missing", "k", FieldTable::new())
        .await
        .unwrap();
    b.queue_unbind(ch, "missing", "x", "k", FieldTable::new())
        .await
        .unwrap();
    assert!(b.channel_open(ch).await);
}

async fn exchange_unbind_stops_routing(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "front", "direct").await;
    b.exchange(ch, "back", "fanout").await;
    b.queue(ch, "q").await;
    b.bind(ch, "q", "back", "").await;
    b.exchange_bind(ch, "back", "front", "k", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "front", "k", "before").await;
    // Another key, or arguments, name another binding: this one stays.
    b.exchange_unbind(ch, "back", "front", "other", FieldTable::new())
        .await
        .unwrap();
    let args = table(&[("a", s("1"))]);
    b.exchange_unbind(ch, "back", "front", "k", args)
        .await
        .unwrap();
    b.send(ch, "front", "k", "still bound").await;
    b.exchange_unbind(ch, "back", "front", "k", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "front", "k", "after").await;
    assert_eq!(b.drain(ch, "q").await, ["before", "still bound"]);
    // Unbinding what is not bound, or from or to a missing exchange, is fine (RabbitMQ 3.10).
    b.exchange_unbind(ch, "back", "front", "k", FieldTable::new())
        .await
        .unwrap();
    b.exchange_unbind(ch, "back", "missing", "k", FieldTable::new())
        .await
        .unwrap();
    b.exchange_unbind(ch, "missing", "front", "k", FieldTable::new())
        .await
        .unwrap();
    // The default exchange is neither end of a binding, bound or not.
    let default_exchange = (
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange".to_owned(),
    );
    let error = b
        .exchange_unbind(ch, "", "front", "k", FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!((error.code, error.text), default_exchange, "destination");
    let ch = b.channel(c).await;
    let error = b
        .exchange_unbind(ch, "back", "", "k", FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!((error.code, error.text), default_exchange, "source");
    // Nor can it be declared, even passively.
    let ch = b.channel(c).await;
    let passive = XFlags {
        passive: true,
        ..XFlags::default()
    };
    let error = b
        .exchange_declare(ch, "", "direct", passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.text),
        default_exchange,
        "passive declare"
    );
}

async fn an_empty_queue_name_means_the_channels_last_declared_queue(b: &mut impl Amqp) {
    let c = b.connection().await;
    let none_declared = (404, "NOT_FOUND - no previously declared queue".to_owned());
    let refusal = |error: Reply| (error.code, norm(&error.text));
    // On a channel that has declared no queue, each method that reads the shortcut refuses.
    let ch = b.channel(c).await;
    let error = b.queue_bind(ch, "", "amq.direct", "k", FieldTable::new());
    assert_eq!(refusal(error.await.unwrap_err()), none_declared, "bind");
    let ch = b.channel(c).await;
    let error = b.queue_unbind(ch, "", "amq.direct", "k", FieldTable::new());
    assert_eq!(refusal(error.await.unwrap_err()), none_declared, "unbind");
    let ch = b.channel(c).await;
    let error = b.queue_purge(ch, "").await.unwrap_err();
    assert_eq!(refusal(error), none_declared, "purge");
    let ch = b.channel(c).await;
    let error = b.queue_delete(ch, "", false, false).await.unwrap_err();
    assert_eq!(refusal(error), none_declared, "delete");
    let ch = b.channel(c).await;
    let error = b.get(ch, "", true).await.unwrap_err();
    assert_eq!(refusal(error), none_declared, "get");
    let ch = b.channel(c).await;
    let error = b.consume(ch, "", "t", false, false).await.unwrap_err();
    assert_eq!(refusal(error), none_declared, "consume");

    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    b.queue(ch, "first").await;
    b.queue(ch, "q").await;
    b.bind(ch, "", "x", "k").await;
    // The routing key empty too: bound by the queue's name.
    b.bind(ch, "", "x", "").await;
    b.send(ch, "x", "k", "by key").await;
    b.send(ch, "x", "q", "by name").await;
    b.send(ch, "x", "", "by empty key").await;
    assert_eq!(b.depth("q").await, Some(2));
    let (got, _) = b.get(ch, "", true).await.unwrap().unwrap();
    assert_eq!(got.text(), "by key");
    assert_eq!(b.queue_purge(ch, "").await.unwrap(), 1);
    b.queue_unbind(ch, "", "x", "", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "x", "q", "unbound").await;
    assert_eq!(b.depth("q").await, Some(0));
    let sub = b.consume(ch, "", "t", true, false).await.unwrap();
    b.send(ch, "x", "k", "consumed").await;
    assert_eq!(b.next(sub).await.msg().text(), "consumed");
    // The shortcut is the channel's own.
    let other = b.channel(c).await;
    let error = b.get(other, "", true).await.unwrap_err();
    assert_eq!(refusal(error), none_declared, "another channel");
    // A passive declare sets it, and does not read it.
    let ch = b.channel(c).await;
    let passive = QFlags {
        passive: true,
        ..QFlags::default()
    };
    b.queue_declare(ch, "first", passive, FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "", "first", "m").await;
    assert_eq!(b.queue_delete(ch, "", false, false).await.unwrap(), 1);
    assert_eq!(b.depth("first").await, None);
    // Its queue gone, the name still stands for it.
    let error = b.get(ch, "", true).await.unwrap_err();
    assert_eq!(
        refusal(error),
        (404, "NOT_FOUND - no queue 'first' in vhost '/'".to_owned())
    );
    let ch = b.channel(c).await;
    let error = b
        .queue_declare(ch, "", passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (404, "NOT_FOUND - no queue '' in vhost '/'".to_owned())
    );
    // A server-named queue is the last declared too.
    let ch = b.channel(c).await;
    let exclusive = QFlags {
        exclusive: true,
        ..QFlags::default()
    };
    let (named, _, _) = b
        .queue_declare(ch, "", exclusive, FieldTable::new())
        .await
        .unwrap();
    assert!(named.starts_with("amq.gen-"), "{named}");
    b.send(ch, "", &named, "to the server-named queue").await;
    let (got, _) = b.get(ch, "", true).await.unwrap().unwrap();
    assert_eq!(got.text(), "to the server-named queue");
}

async fn names_lose_their_cr_and_lf_where_rabbitmq_strips_them(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let refusal = |error: Reply| (error.code, norm(&error.text));
    // Declares, binds, unbinds and deletes drop CR and LF from queue and exchange names.
    let (name, _, _) = b
        .queue_declare(ch, "or\nders", QFlags::default(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(name, "orders");
    b.exchange(ch, "x\r", "direct").await;
    b.exchange(ch, "fan", "fanout").await;
    let passive = XFlags {
        passive: true,
        ..XFlags::default()
    };
    b.exchange_declare(ch, "x", "direct", passive, FieldTable::new())
        .await
        .unwrap();
    b.exchange_bind(ch, "x\n", "fan\r\n", "k\n", FieldTable::new())
        .await
        .unwrap();
    // Routing keys keep theirs.
    b.bind(ch, "orders\r", "x\n", "k\n").await;
    b.send(ch, "fan", "k\n", "through fan").await;
    b.send(ch, "x", "k\n", "by key").await;
    b.send(ch, "x", "k", "other key").await;
    assert_eq!(b.depth("orders").await, Some(2));
    b.exchange_unbind(ch, "\nx", "fan", "k\n", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "fan", "k\n", "unbound").await;
    assert_eq!(b.depth("orders").await, Some(2));
    // `basic.get`, `basic.consume` and `queue.purge` take the name as it is.
    let error = b.get(ch, "orders\n", true).await.unwrap_err();
    assert_eq!(
        refusal(error),
        (
            404,
            "NOT_FOUND - no queue 'orders\n' in vhost '/'".to_owned()
        )
    );
    let ch = b.channel(c).await;
    let error = b.queue_purge(ch, "orders\r").await.unwrap_err();
    assert_eq!(
        refusal(error),
        (
            404,
            "NOT_FOUND - no queue 'orders\r' in vhost '/'".to_owned()
        )
    );
    let ch = b.channel(c).await;
    let error = b
        .consume(ch, "\norders", "t", true, false)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (
            404,
            "NOT_FOUND - no queue '\norders' in vhost '/'".to_owned()
        )
    );
    // Stripped after the empty-name shortcut: "\n" is not the shortcut but the empty name.
    let ch = b.channel(c).await;
    b.queue(ch, "orders").await;
    let error = b.queue_bind(ch, "\n", "x", "k", FieldTable::new());
    assert_eq!(
        refusal(error.await.unwrap_err()),
        (404, "NOT_FOUND - no queue '' in vhost '/'".to_owned())
    );
    let ch = b.channel(c).await;
    let (named, _, _) = b
        .queue_declare(
            ch,
            "\r\n",
            QFlags {
                exclusive: true,
                ..QFlags::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    assert!(named.starts_with("amq.gen-"), "{named}");
    // Direct reply-to's pseudo-queue is recognised by the name as sent, then stripped.
    let passive_queue = QFlags {
        passive: true,
        ..QFlags::default()
    };
    let (name, messages, consumers) = b
        .queue_declare(
            ch,
            "amq.rabbitmq.reply-to\n",
            passive_queue,
            FieldTable::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (name.as_str(), messages, consumers),
        ("amq.rabbitmq.reply-to", 0, 1)
    );
    let error = b
        .queue_declare(
            ch,
            "\namq.rabbitmq.reply-to",
            QFlags::default(),
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.rabbitmq.reply-to' contains reserved prefix 'amq.*'"
                .to_owned()
        )
    );
    let ch = b.channel(c).await;
    // The reserved prefix and the default exchange are checked on the stripped name.
    let error = b
        .exchange_declare(
            ch,
            "amq\n.x",
            "direct",
            XFlags::default(),
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.x' contains reserved prefix 'amq.*'".to_owned()
        )
    );
    let ch = b.channel(c).await;
    let error = b.exchange_delete(ch, "\r", false).await.unwrap_err();
    assert_eq!(
        refusal(error),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".to_owned()
        )
    );
    let ch = b.channel(c).await;
    assert_eq!(
        b.queue_delete(ch, "orders\n", false, false).await.unwrap(),
        2
    );
    assert_eq!(b.depth("orders").await, None);
    b.exchange_delete(ch, "x\r\n", false).await.unwrap();
    let error = b
        .exchange_declare(ch, "x", "direct", passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (404, "NOT_FOUND - no exchange 'x' in vhost '/'".to_owned())
    );
}

/// A consumer tag the channel already has is 530, which closes the connection; RabbitMQ
/// checks it before it looks the queue up (probed on 3.10.8), so a missing queue does not
/// make it a 404. Another channel may use the tag.
async fn a_reused_consumer_tag_closes_the_connection_before_the_queue_is_looked_up(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.consume(ch, "q", "t", true, false).await.unwrap();
    let other = b.channel(c).await;
    b.consume(other, "q", "t", true, false).await.unwrap();
    let error = b
        .consume(ch, "missing", "t", true, false)
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.text),
        (
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 't'".to_owned()
        )
    );
    assert!(!b.channel_open(other).await, "the connection is closed");
}

/// The exchanges a vhost starts with, as RabbitMQ 3.10 has them: durable, each of its type,
/// the tracer's `amq.rabbitmq.trace` internal (so bound to, never published to), and none
/// deletable.
async fn every_vhost_starts_with_rabbitmqs_system_exchanges(b: &mut impl Amqp) {
    let c = b.connection().await;
    let refusal = |error: Reply| (error.code, norm(&error.text));
    let system = [
        ("amq.direct", "direct", false),
        ("amq.fanout", "fanout", false),
        ("amq.topic", "topic", false),
        ("amq.headers", "headers", false),
        ("amq.match", "headers", false),
        ("amq.rabbitmq.trace", "topic", true),
    ];
    for (name, kind, internal) in system {
        let ch = b.channel(c).await;
        let flags = XFlags {
            durable: true,
            internal,
            ..XFlags::default()
        };
        b.exchange_declare(ch, name, kind, flags, FieldTable::new())
            .await
            .unwrap_or_else(|e| panic!("redeclaring {name}: {e:?}"));
        let error = b.exchange_delete(ch, name, false).await.unwrap_err();
        assert_eq!(
            refusal(error),
            (
                403,
                format!(
                    "ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
                )
            )
        );
    }
    let ch = b.channel(c).await;
    let not_internal = XFlags {
        durable: true,
        ..XFlags::default()
    };
    let error = b
        .exchange_declare(
            ch,
            "amq.rabbitmq.trace",
            "topic",
            not_internal,
            FieldTable::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange 'amq.rabbitmq.trace' in vhost '/': received 'false' but current is 'true'"
                .to_owned()
        )
    );
    let ch = b.channel(c).await;
    b.queue(ch, "traced").await;
    b.bind(ch, "traced", "amq.rabbitmq.trace", "#").await;
    let error = b
        .publish(
            ch,
            "amq.rabbitmq.trace",
            "k",
            false,
            Properties::default(),
            "m",
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(error),
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' in vhost '/'"
                .to_owned()
        )
    );
    assert_eq!(b.depth("traced").await, Some(0));
}

async fn exchange_delete_if_unused_and_missing(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "fanout").await;
    b.queue(ch, "q").await;
    b.bind(ch, "q", "x", "").await;
    let error = b.exchange_delete(ch, "x", true).await.unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            406,
            "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use".to_owned()
        )
    );
    let ch = b.channel(c).await;
    b.exchange_delete(ch, "x", false).await.unwrap();
    b.exchange_delete(ch, "x", false).await.unwrap();
    let error = b
        .publish(ch, "x", "", false, Properties::default(), "m")
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
}

/// The `x-death` entries of a message with their `time` left out (it is the broker's clock).
fn deaths(msg: &harness::Msg) -> Vec<FieldTable> {
    match msg.header("x-death") {
        Some(FieldValue::Array(items)) => items
            .iter()
            .map(|item| match item {
                FieldValue::Table(t) => {
                    let mut t = t.clone();
                    assert!(matches!(t.remove("time"), Some(FieldValue::Timestamp(_))));
                    t
                }
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death is {other:?}"),
    }
}

fn death(count: i64, reason: &str, queue: &str, exchange: &str, keys: &[&str]) -> FieldTable {
    table(&[
        ("count", i(count)),
        ("reason", s(reason)),
        ("queue", s(queue)),
        ("exchange", s(exchange)),
        (
            "routing-keys",
            FieldValue::Array(keys.iter().map(|k| s(k)).collect()),
        ),
    ])
}

/// Queue flags for a durable queue (quorum queues must be).
const DURABLE: QFlags = QFlags {
    durable: true,
    exclusive: false,
    auto_delete: false,
    passive: false,
};

/// A durable quorum queue without other arguments.
async fn quorum_queue(b: &mut impl Amqp, ch: harness::Ch, name: &str) {
    let quorum = table(&[("x-queue-type", s("quorum"))]);
    b.queue_declare(ch, name, DURABLE, quorum).await.unwrap();
}

/// The fanout exchange `dlx` and the queue `dead` bound to it: where the tests dead-letter.
async fn dead_letter_target(b: &mut impl Amqp, ch: harness::Ch) {
    b.exchange(ch, "dlx", "fanout").await;
    b.queue(ch, "dead").await;
    b.bind(ch, "dead", "dlx", "").await;
}

async fn dead_letter_setup(b: &mut impl Amqp, ch: harness::Ch, queue: &str, mut args: FieldTable) {
    dead_letter_target(b, ch).await;
    args.insert("x-dead-letter-exchange".into(), s("dlx"));
    b.queue_declare(ch, queue, QFlags::default(), args)
        .await
        .unwrap();
}

async fn queue_ttl_expires_messages_into_the_dead_letter_exchange(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "q", table(&[("x-message-ttl", i(200))])).await;
    b.send(ch, "", "q", "old").await;
    b.sleep_ms(100).await;
    b.send(ch, "", "q", "young").await;
    b.sleep_ms(200).await;
    // Real brokers fire their TTL timer a little late.
    b.sleep_ms(300).await;
    assert_eq!(b.depth("q").await, Some(0));
    let (msg, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(msg.text(), "old");
    assert_eq!(deaths(&msg), [death(1, "expired", "q", "", &["q"])]);
    assert_eq!(msg.header("x-first-death-reason"), Some(&s("expired")));
    assert_eq!(msg.header("x-first-death-queue"), Some(&s("q")));
    assert_eq!(msg.header("x-first-death-exchange"), Some(&s("")));
    assert_eq!(
        (msg.exchange.as_str(), msg.routing_key.as_str()),
        ("dlx", "q")
    );
    assert_eq!(b.drain(ch, "dead").await, ["young"]);
}

async fn per_message_expiration_expires_at_the_head(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "q", FieldTable::new()).await;
    let expiring = |ms: &str| Properties {
        expiration: Some(ms.to_owned()),
        ..Properties::default()
    };
    b.publish(ch, "", "q", false, expiring("100"), "short")
        .await
        .unwrap();
    b.publish(ch, "", "q", false, Properties::default(), "forever")
        .await
        .unwrap();
    b.publish(ch, "", "q", false, expiring("100"), "stuck")
        .await
        .unwrap();
    b.sleep_ms(600).await;
    // Only the head expires: "stuck" waits behind "forever".
    assert_eq!(b.depth("q").await, Some(2));
    let (msg, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(msg.text(), "short");
    assert_eq!(msg.properties.expiration, None);
    let mut expected = death(1, "expired", "q", "", &["q"]);
    expected.insert("original-expiration".into(), s("100"));
    assert_eq!(deaths(&msg), [expected]);
    let (forever, _) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!(forever.text(), "forever");
    // Expired messages are never delivered, not even by basic.get.
    assert!(b.get(ch, "q", true).await.unwrap().is_none());
    assert_eq!(b.drain(ch, "dead").await, ["stuck"]);
}

async fn max_length_drops_the_head_and_dead_letters_it(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "q", table(&[("x-max-length", i(2))])).await;
    for n in 1..=4 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    assert_eq!(b.drain(ch, "q").await, ["3", "4"]);
    let (msg, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(msg.text(), "1");
    assert_eq!(deaths(&msg), [death(1, "maxlen", "q", "", &["q"])]);
    assert_eq!(b.drain(ch, "dead").await, ["2"]);
}

/// A message that arrives at an empty `drop-head` queue reaches a consumer with credit even
/// when it is over the length limit on its own (`x-max-length: 0`, or a body past
/// `x-max-length-bytes`): RabbitMQ offers it before it looks at the limit, in classic and
/// quorum queues alike. With no consumer able to take it, it is dropped and dead-lettered.
async fn a_message_over_the_limit_on_its_own_still_reaches_a_waiting_consumer(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    b.qos(ch, 1, false).await.unwrap();
    let quorum = || ("x-queue-type", s("quorum"));
    let queues = [
        ("classic-count", vec![("x-max-length", i(0))]),
        ("classic-bytes", vec![("x-max-length-bytes", i(3))]),
        ("quorum-count", vec![quorum(), ("x-max-length", i(0))]),
        ("quorum-bytes", vec![quorum(), ("x-max-length-bytes", i(3))]),
    ];
    for (queue, args) in &queues {
        let mut args = table(args);
        args.insert("x-dead-letter-exchange".into(), s("dlx"));
        b.queue_declare(ch, queue, DURABLE, args).await.unwrap();
        let consumer = b.consume(ch, queue, queue, false, false).await.unwrap();
        b.send(ch, "", queue, &format!("{queue}-taken")).await;
        let taken = b.next(consumer).await.msg();
        assert_eq!(taken.text(), format!("{queue}-taken"));
        // Its consumer's one unit of credit is used: the next is over the limit and dropped.
        b.send(ch, "", queue, &format!("{queue}-dropped")).await;
        assert!(matches!(b.quiet(consumer).await, Next::Empty), "{queue}");
        assert_eq!(b.depth(queue).await, Some(0), "{queue}");
        b.ack(ch, taken.tag, false).await.unwrap();
    }
    // Dead-lettering is in the background on RabbitMQ.
    assert_eq!(b.depth_becomes("dead", Some(4)).await, Some(4));
    let mut dead = Vec::new();
    while let Some((msg, _)) = b.get(ch, "dead", true).await.unwrap() {
        assert_eq!(deaths(&msg)[0].get("reason"), Some(&s("maxlen")));
        dead.push(msg.text());
    }
    dead.sort();
    let mut expected: Vec<String> = queues.iter().map(|(q, _)| format!("{q}-dropped")).collect();
    expected.sort();
    assert_eq!(dead, expected);
}

/// A requeue that takes a queue over `x-max-length` drops the head under `drop-head` (a
/// classic queue's head is the requeued message, back in its place; a quorum queue's is the
/// oldest waiting, the requeued one going to the back), and leaves a `reject-publish` queue
/// over its limit.
async fn a_requeue_past_the_length_limit_drops_the_head_unless_publishes_are_refused(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    let limited = |more: &[(&str, FieldValue)]| {
        let mut args = table(&[("x-max-length", i(2)), ("x-dead-letter-exchange", s("dlx"))]);
        for (key, value) in more {
            args.insert((*key).into(), value.clone());
        }
        args
    };
    let durable = DURABLE;
    let queues = [
        ("drop", limited(&[])),
        ("keep", limited(&[("x-overflow", s("reject-publish"))])),
        ("quorum", limited(&[("x-queue-type", s("quorum"))])),
    ];
    for (queue, args) in queues {
        b.queue_declare(ch, queue, durable, args).await.unwrap();
        b.send(ch, "", queue, &format!("{queue}-a")).await;
        b.send(ch, "", queue, &format!("{queue}-b")).await;
        let (first, _) = b.get(ch, queue, false).await.unwrap().unwrap();
        b.send(ch, "", queue, &format!("{queue}-c")).await;
        b.nack(ch, first.tag, false, true).await.unwrap();
    }
    assert_eq!(b.drain(ch, "drop").await, ["drop-b", "drop-c"]);
    assert_eq!(b.drain(ch, "keep").await, ["keep-a", "keep-b", "keep-c"]);
    assert_eq!(b.drain(ch, "quorum").await, ["quorum-c", "quorum-a"]);
    // Dead-lettering is in the background on RabbitMQ.
    assert_eq!(b.depth_becomes("dead", Some(2)).await, Some(2));
    let mut dead = Vec::new();
    while let Some((msg, _)) = b.get(ch, "dead", true).await.unwrap() {
        let reason = deaths(&msg)[0].get("reason").cloned();
        dead.push((msg.text(), reason));
    }
    assert_eq!(
        dead,
        [
            ("drop-a".to_owned(), Some(s("maxlen"))),
            ("quorum-b".to_owned(), Some(s("maxlen"))),
        ]
    );
}

/// When a requeue leaves a `drop-head` queue over its length limit: a classic queue drops a
/// nacked or recovered message's head at once, one message at a time in tag order, and a
/// closed channel's after the whole batch is back, then delivers; a quorum queue first
/// delivers to the consumer whose nack gave it credit, and drops only what is still over the
/// limit after that (RabbitMQ 3.10, probed).
async fn a_requeue_past_the_limit_drops_in_rabbitmqs_order_and_a_quorum_queue_delivers_first(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    let durable = DURABLE;
    let limited = |kind: &str| {
        table(&[
            ("x-queue-type", s(kind)),
            ("x-max-length", i(2)),
            ("x-dead-letter-exchange", s("dlx")),
        ])
    };

    // m1 is redelivered under a later tag than m2, so tag order is not queue order. A recover
    // requeues and drops one message at a time, in tag order; a closed channel's messages go
    // back together and the heads are dropped in queue order.
    for (how, dropped) in [("recover", ["m2", "m1"]), ("close", ["m1", "m2"])] {
        b.queue_declare(ch, how, durable, limited("classic"))
            .await
            .unwrap();
        b.send(ch, "", how, "m1").await;
        b.send(ch, "", how, "m2").await;
        let getter = b.channel(c).await;
        let (m1, _) = b.get(getter, how, false).await.unwrap().unwrap();
        b.get(getter, how, false).await.unwrap().unwrap();
        b.nack(getter, m1.tag, false, true).await.unwrap();
        let (again, _) = b.get(getter, how, false).await.unwrap().unwrap();
        assert_eq!((again.text(), again.redelivered), ("m1".to_owned(), true));
        b.send(ch, "", how, "m3").await;
        b.send(ch, "", how, "m4").await;
        if how == "recover" {
            b.recover(getter, true).await.unwrap();
        } else {
            b.close_channel(getter).await;
        }
        // Dead-lettering is in the background on RabbitMQ.
        assert_eq!(b.depth_becomes("dead", Some(2)).await, Some(2), "{how}");
        assert_eq!(b.drain(ch, how).await, ["m3", "m4"], "{how}");
        assert_eq!(b.drain(ch, "dead").await, dropped, "{how}");
    }

    // A consumer with a prefetch of 1 holds `a`; `b` and `c` wait; it nacks `a`.
    for kind in ["classic", "quorum"] {
        b.queue_declare(ch, kind, durable, limited(kind))
            .await
            .unwrap();
        let consuming = b.channel(c).await;
        b.qos(consuming, 1, false).await.unwrap();
        let sub = b.consume(consuming, kind, "c", false, false).await.unwrap();
        for text in ["a", "b", "c"] {
            b.send(ch, "", kind, text).await;
        }
        let held = b.next(sub).await.msg();
        assert_eq!(held.text(), "a");
        b.nack(consuming, held.tag, false, true).await.unwrap();
        // The classic queue drops `a`, back at its head, then delivers `b`; the quorum
        // queue delivers `b` from `[b, c, a]` and is then within its limit.
        assert_eq!(b.next(sub).await.msg().text(), "b");
        b.cancel(consuming, sub).await.unwrap();
    }
    assert_eq!(b.depth_becomes("dead", Some(1)).await, Some(1));
    assert_eq!(b.drain(ch, "dead").await, ["a"]);
    assert_eq!(b.drain(ch, "classic").await, ["c"]);
    assert_eq!(b.drain(ch, "quorum").await, ["c", "a"]);
}

/// Messages that come back to a quorum queue to be served first (a closed channel's, or a
/// recover's with `x-delivery-limit`) come back in one rabbit_fifo command, and the heads its
/// length limit then drops together are dead-lettered last first. Requeued to the back (a
/// recover without the delivery limit), each message is a command of its own and drops one
/// head (RabbitMQ 3.10.8, probed; found by the consumer differential test).
async fn a_quorum_queue_dead_letters_what_one_return_drops_last_first(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    let cases = [
        ("closed", "close", false, ["m3", "m2", "m1"], ["m4", "m5"]),
        ("limited", "recover", true, ["m3", "m2", "m1"], ["m4", "m5"]),
        (
            "unlimited",
            "recover",
            false,
            ["m4", "m5", "m1"],
            ["m2", "m3"],
        ),
    ];
    for (queue, how, delivery_limit, dropped, left) in cases {
        let mut args = table(&[
            ("x-queue-type", s("quorum")),
            ("x-max-length", i(2)),
            ("x-dead-letter-exchange", s("dlx")),
        ]);
        if delivery_limit {
            args.insert("x-delivery-limit".into(), i(5));
        }
        b.queue_declare(ch, queue, DURABLE, args).await.unwrap();
        let consuming = b.channel(c).await;
        b.qos(consuming, 3, false).await.unwrap();
        let sub = b
            .consume(consuming, queue, "c", false, false)
            .await
            .unwrap();
        for text in ["m1", "m2", "m3", "m4", "m5"] {
            b.send(ch, "", queue, text).await;
        }
        for text in ["m1", "m2", "m3"] {
            assert_eq!(b.next(sub).await.msg().text(), text, "{queue}");
        }
        if how == "close" {
            b.close_channel(consuming).await;
        } else {
            b.cancel(consuming, sub).await.unwrap();
            b.recover(consuming, true).await.unwrap();
        }
        // Dead-lettering is in the background on RabbitMQ.
        assert_eq!(b.depth_becomes("dead", Some(3)).await, Some(3), "{queue}");
        assert_eq!(b.drain(ch, "dead").await, dropped, "{queue}");
        assert_eq!(b.drain(ch, queue).await, left, "{queue}");
    }
}

async fn max_length_bytes_with_reject_publish_nacks_the_publisher(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let args = table(&[
        ("x-max-length-bytes", i(10)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(ch, "q", QFlags::default(), args)
        .await
        .unwrap();
    b.queue(ch, "free").await;
    b.exchange(ch, "x", "fanout").await;
    b.bind(ch, "q", "x", "").await;
    b.bind(ch, "free", "x", "").await;
    b.send(ch, "x", "", "12345").await;
    b.send(ch, "x", "", "67890").await;
    let p = b
        .publish(ch, "x", "", false, Properties::default(), "x")
        .await
        .unwrap();
    assert!(!p.acked, "a full reject-publish queue nacks");
    // The other queue took it all the same.
    assert_eq!(b.drain(ch, "q").await, ["12345", "67890"]);
    assert_eq!(b.drain(ch, "free").await, ["12345", "67890", "x"]);
    b.send(ch, "x", "", "room").await;
}

async fn rejected_message_is_dead_lettered_with_x_death(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_setup(b, ch, "work", FieldTable::new()).await;
    b.exchange(ch, "in", "direct").await;
    b.bind(ch, "work", "in", "job").await;
    b.send(ch, "in", "job", "poison").await;
    let sub = b.consume(ch, "work", "c", false, false).await.unwrap();
    let msg = b.next(sub).await.msg();
    b.reject(ch, msg.tag, false).await.unwrap();
    let dead = b.consume(ch, "dead", "d", false, false).await.unwrap();
    let msg = b.next(dead).await.msg();
    assert_eq!(
        (msg.exchange.as_str(), msg.routing_key.as_str()),
        ("dlx", "job")
    );
    assert_eq!(deaths(&msg), [death(1, "rejected", "work", "in", &["job"])]);
    // Back to work by hand, rejected again: the entry for (work, rejected) counts 2.
    b.publish(ch, "in", "job", false, msg.properties.clone(), "poison")
        .await
        .unwrap();
    b.ack(ch, msg.tag, false).await.unwrap();
    let again = b.next(sub).await.msg();
    b.nack(ch, again.tag, false, false).await.unwrap();
    let msg = b.next(dead).await.msg();
    assert_eq!(deaths(&msg), [death(2, "rejected", "work", "in", &["job"])]);
    assert_eq!(msg.header("x-first-death-reason"), Some(&s("rejected")));
    b.ack(ch, msg.tag, false).await.unwrap();
}

async fn dead_letter_routing_key_replaces_the_key(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "dlx", "direct").await;
    b.queue(ch, "parking").await;
    b.bind(ch, "parking", "dlx", "parked").await;
    let args = table(&[
        ("x-dead-letter-exchange", s("dlx")),
        ("x-dead-letter-routing-key", s("parked")),
    ]);
    b.queue_declare(ch, "q", QFlags::default(), args)
        .await
        .unwrap();
    b.send(ch, "", "q", "m").await;
    let (msg, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    b.nack(ch, msg.tag, false, false).await.unwrap();
    let (dead, _) = b.get(ch, "parking", true).await.unwrap().unwrap();
    assert_eq!(
        (dead.exchange.as_str(), dead.routing_key.as_str()),
        ("dlx", "parked")
    );
    assert_eq!(deaths(&dead), [death(1, "rejected", "q", "", &["q"])]);
}

/// A quorum queue keeps counting a cancelled consumer that still holds unacked deliveries, in
/// `queue.declare-ok`'s consumer count, until the last of them is settled (an ack, a reject, or
/// its channel's close); a classic queue stops counting it at the cancel.
/// The consumer count a redeclare reports once RabbitMQ has applied the settles (which have no
/// answer).
async fn consumers_become(
    b: &mut impl Amqp,
    ch: harness::Ch,
    queue: &str,
    args: FieldTable,
    expected: u32,
) -> u32 {
    let mut count = 0;
    for _ in 0..40 {
        count = b
            .queue_declare(ch, queue, DURABLE, args.clone())
            .await
            .unwrap()
            .2;
        if count == expected {
            break;
        }
        b.sleep_ms(50).await;
    }
    count
}

async fn a_cancelled_quorum_consumer_counts_until_its_deliveries_are_settled(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let quorum = || table(&[("x-queue-type", s("quorum"))]);
    for (queue, args, counted) in [
        ("classic", FieldTable::new(), false),
        ("quorum", quorum(), true),
    ] {
        b.queue_declare(ch, queue, DURABLE, args.clone())
            .await
            .unwrap();
        let consumer = b.consume(ch, queue, queue, false, false).await.unwrap();
        b.send(ch, "", queue, "one").await;
        b.send(ch, "", queue, "two").await;
        let one = b.next(consumer).await.msg();
        let two = b.next(consumer).await.msg();
        b.cancel(ch, consumer).await.unwrap();
        let held = u32::from(counted);
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), held).await,
            held,
            "{queue}"
        );
        b.ack(ch, one.tag, false).await.unwrap();
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), held).await,
            held,
            "{queue}"
        );
        b.reject(ch, two.tag, true).await.unwrap();
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), 0).await,
            0,
            "{queue}"
        );
    }
    // A channel's close settles what its cancelled consumer held.
    let other = b.channel(c).await;
    let consumer = b
        .consume(other, "quorum", "again", false, false)
        .await
        .unwrap();
    let _ = b.next(consumer).await.msg();
    b.cancel(other, consumer).await.unwrap();
    assert_eq!(consumers_become(b, ch, "quorum", quorum(), 1).await, 1);
    b.close_channel(other).await;
    assert_eq!(consumers_become(b, ch, "quorum", quorum(), 0).await, 0);
    assert_eq!(b.depth_becomes("quorum", Some(1)).await, Some(1));
}

/// rabbit_fifo checks a manual-ack `basic.get` out to a consumer of its own, kept until the
/// delivery is settled; `queue.declare-ok` counts rabbit_fifo's consumer map, where a single
/// active consumer queue keeps only the active one (the others wait elsewhere).
async fn a_quorum_queue_counts_unsettled_gets_and_only_its_active_consumer(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let quorum = || table(&[("x-queue-type", s("quorum"))]);
    for (queue, args, counted) in [
        ("classic", FieldTable::new(), false),
        ("quorum", quorum(), true),
    ] {
        b.queue_declare(ch, queue, DURABLE, args.clone())
            .await
            .unwrap();
        for body in ["one", "two", "three"] {
            b.send(ch, "", queue, body).await;
        }
        let (one, _) = b.get(ch, queue, false).await.unwrap().unwrap();
        let (two, _) = b.get(ch, queue, false).await.unwrap().unwrap();
        let (three, _) = b.get(ch, queue, true).await.unwrap().unwrap();
        assert_eq!(
            [one.text(), two.text(), three.text()],
            ["one", "two", "three"]
        );
        let gets = if counted { 2 } else { 0 };
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), gets).await,
            gets
        );
        b.reject(ch, one.tag, true).await.unwrap();
        let left = if counted { 1 } else { 0 };
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), left).await,
            left
        );
        b.ack(ch, two.tag, false).await.unwrap();
        assert_eq!(consumers_become(b, ch, queue, args.clone(), 0).await, 0);
        // A get on a channel that closes is settled by the close.
        let other = b.channel(c).await;
        let _ = b.get(other, queue, false).await.unwrap().unwrap();
        let held = u32::from(counted);
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), held).await,
            held
        );
        b.close_channel(other).await;
        assert_eq!(consumers_become(b, ch, queue, args.clone(), 0).await, 0);
        assert_eq!(b.depth_becomes(queue, Some(1)).await, Some(1));
    }
    for (queue, mut args, all_counted) in [
        ("classic-single", FieldTable::new(), true),
        ("quorum-single", quorum(), false),
    ] {
        args.insert("x-single-active-consumer".into(), FieldValue::Bool(true));
        b.queue_declare(ch, queue, DURABLE, args.clone())
            .await
            .unwrap();
        let mut consumers = Vec::new();
        for tag in ["first", "second", "third"] {
            consumers.push(b.consume(ch, queue, tag, false, false).await.unwrap());
        }
        let count = |n: u32| if all_counted { n } else { 1 };
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), count(3)).await,
            count(3)
        );
        // The active one goes: the next becomes active.
        b.cancel(ch, consumers[0]).await.unwrap();
        assert_eq!(
            consumers_become(b, ch, queue, args.clone(), count(2)).await,
            count(2)
        );
        b.cancel(ch, consumers[2]).await.unwrap();
        assert_eq!(consumers_become(b, ch, queue, args.clone(), 1).await, 1);
        b.cancel(ch, consumers[1]).await.unwrap();
        assert_eq!(consumers_become(b, ch, queue, args.clone(), 0).await, 0);
    }
}

/// `x-expires` on a quorum queue runs only while rabbit_fifo's consumer map is empty (so a
/// cancelled consumer still holding deliveries, or an unsettled get, holds it off until
/// settled), and no `queue.declare` counts as use; a classic queue's redeclare does.
/// RabbitMQ looks at a quorum queue's expiry on its tick (every 5 s by default), so on
/// RabbitMQ this waits for the unused queue to go and then one tick longer.
async fn a_quorum_queue_expires_once_nothing_holds_it_and_declares_do_not_renew_it(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let expiring = |quorum: bool| {
        let mut args = table(&[("x-expires", i(1_000))]);
        if quorum {
            args.insert("x-queue-type".into(), s("quorum"));
        }
        args
    };
    for (queue, quorum) in [
        ("held-by-a-get", true),
        ("held-by-a-cancelled-consumer", true),
        ("quorum-redeclared", true),
        ("classic-redeclared", false),
    ] {
        b.queue_declare(ch, queue, DURABLE, expiring(quorum))
            .await
            .unwrap();
        b.send(ch, "", queue, queue).await;
    }
    let (got, _) = b.get(ch, "held-by-a-get", false).await.unwrap().unwrap();
    let sub = b
        .consume(ch, "held-by-a-cancelled-consumer", "c", false, false)
        .await
        .unwrap();
    let held = b.next(sub).await.msg();
    b.cancel(ch, sub).await.unwrap();
    // Every 250 ms both redeclared queues are declared again; the quorum one goes anyway.
    let mut waited_ms = 0;
    while waited_ms < 15_000 && b.depth("quorum-redeclared").await.is_some() {
        redeclare_every_quarter_second(b, ch, 250).await;
        waited_ms += 250;
    }
    assert_eq!(b.depth("quorum-redeclared").await, None);
    assert!(waited_ms >= 1_000, "gone after {waited_ms} ms");
    // One tick more: a queue nothing held would be gone by now too.
    redeclare_every_quarter_second(b, ch, 6_000).await;
    assert_eq!(b.depth("held-by-a-get").await, Some(0));
    assert_eq!(b.depth("held-by-a-cancelled-consumer").await, Some(0));
    assert_eq!(b.depth("classic-redeclared").await, Some(1));
    // Settled, they hold nothing: their time runs from the settle.
    b.ack(ch, got.tag, false).await.unwrap();
    b.reject(ch, held.tag, false).await.unwrap();
    let mut waited_ms = 0;
    while waited_ms < 15_000
        && (b.depth("held-by-a-get").await.is_some()
            || b.depth("held-by-a-cancelled-consumer").await.is_some())
    {
        b.sleep_ms(250).await;
        waited_ms += 250;
    }
    assert_eq!(b.depth("held-by-a-get").await, None);
    assert_eq!(b.depth("held-by-a-cancelled-consumer").await, None);
    assert!(waited_ms >= 1_000, "gone after {waited_ms} ms");
}

/// Redeclares `quorum-redeclared` (when it still exists) and `classic-redeclared` every
/// 250 ms for `ms`.
async fn redeclare_every_quarter_second(b: &mut impl Amqp, ch: harness::Ch, ms: u64) {
    for _ in 0..ms / 250 {
        for (queue, quorum) in [("quorum-redeclared", true), ("classic-redeclared", false)] {
            if b.depth(queue).await.is_none() {
                continue;
            }
            let mut args = table(&[("x-expires", i(1_000))]);
            if quorum {
                args.insert("x-queue-type".into(), s("quorum"));
            }
            b.queue_declare(ch, queue, DURABLE, args).await.unwrap();
        }
        b.sleep_ms(250).await;
    }
}

async fn quorum_queue_counts_deliveries_and_enforces_the_limit(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "dlx", "fanout").await;
    b.queue(ch, "dead").await;
    b.bind(ch, "dead", "dlx", "").await;
    let args = table(&[
        ("x-queue-type", s("quorum")),
        ("x-delivery-limit", i(1)),
        ("x-dead-letter-exchange", s("dlx")),
    ]);
    let error = b
        .queue_declare(ch, "qq", QFlags::default(), args.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            406,
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'qq' in vhost '/'"
                .to_owned()
        )
    );
    let ch = b.channel(c).await;
    let durable = DURABLE;
    b.queue_declare(ch, "qq", durable, args).await.unwrap();
    b.send(ch, "", "qq", "m").await;
    let sub = b.consume(ch, "qq", "c", false, false).await.unwrap();
    let first = b.next(sub).await.msg();
    assert_eq!(first.header("x-delivery-count"), None);
    b.reject(ch, first.tag, true).await.unwrap();
    let second = b.next(sub).await.msg();
    assert!(second.redelivered);
    assert_eq!(second.header("x-delivery-count"), Some(&i(1)));
    b.reject(ch, second.tag, true).await.unwrap();
    // Past the limit: dead-lettered, not redelivered.
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    // `basic.get` names the count even on a first delivery, where a consumer gets no header.
    b.cancel(ch, sub).await.unwrap();
    b.send(ch, "", "qq", "fresh").await;
    let (fresh, _) = b.get(ch, "qq", false).await.unwrap().unwrap();
    assert_eq!(fresh.header("x-delivery-count"), Some(&i(0)));
    b.nack(ch, fresh.tag, false, true).await.unwrap();
    let (again, _) = b.get(ch, "qq", true).await.unwrap().unwrap();
    assert_eq!(
        (
            again.text(),
            again.redelivered,
            again.header("x-delivery-count")
        ),
        ("fresh".to_owned(), true, Some(&i(1)))
    );
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(dead.text(), "m");
    let reasons: Vec<_> = deaths(&dead)
        .into_iter()
        .map(|d| d.get("reason").cloned())
        .collect();
    assert_eq!(reasons, [Some(s("delivery_limit"))]);
}

async fn competing_consumers_get_round_robin(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let one = b.consume(ch, "q", "one", true, false).await.unwrap();
    let two = b.consume(ch, "q", "two", true, false).await.unwrap();
    for n in 0..4 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let mut got = Vec::new();
    for sub in [one, two, one, two] {
        got.push(b.next(sub).await.msg().text());
    }
    assert_eq!(got, ["0", "1", "2", "3"]);
}

async fn prefetch_is_per_consumer(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..5 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    b.qos(ch, 2, false).await.unwrap();
    let one = b.consume(ch, "q", "one", false, false).await.unwrap();
    let two = b.consume(ch, "q", "two", false, false).await.unwrap();
    let a = b.next(one).await.msg();
    let _b = b.next(one).await.msg();
    let _c = b.next(two).await.msg();
    let _d = b.next(two).await.msg();
    assert!(matches!(b.quiet(one).await, Next::Empty));
    assert!(matches!(b.quiet(two).await, Next::Empty));
    assert_eq!(b.depth("q").await, Some(1));
    b.ack(ch, a.tag, false).await.unwrap();
    assert_eq!(b.next(one).await.msg().text(), "4");
}

async fn global_prefetch_is_shared_by_the_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "a").await;
    b.queue(ch, "b").await;
    for n in 0..3 {
        b.send(ch, "", "a", &format!("a{n}")).await;
        b.send(ch, "", "b", &format!("b{n}")).await;
    }
    b.qos(ch, 3, true).await.unwrap();
    let on_a = b.consume(ch, "a", "on-a", false, false).await.unwrap();
    let first = b.next(on_a).await.msg();
    let _ = b.next(on_a).await.msg();
    let _ = b.next(on_a).await.msg();
    let on_b = b.consume(ch, "b", "on-b", false, false).await.unwrap();
    assert!(
        matches!(b.quiet(on_b).await, Next::Empty),
        "the channel's 3 are taken"
    );
    b.ack(ch, first.tag, false).await.unwrap();
    assert_eq!(b.next(on_b).await.msg().text(), "b0");
    assert!(matches!(b.quiet(on_b).await, Next::Empty));
}

/// RabbitMQ's limiter starts a global limit at the channel's unacked count, `basic.get`s
/// included, and takes off only consumer deliveries as they are acked: an unacked get found
/// there holds a consumer back even after it is acked, until the limit is lifted (found by
/// the differential test; rabbit_channel notes "Pretty obscure though").
async fn a_global_limit_counts_the_unacked_gets_it_finds_and_never_their_acks(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "src").await;
    b.queue(ch, "q").await;
    b.send(ch, "", "src", "got").await;
    let (got, _) = b.get(ch, "src", false).await.unwrap().expect("a message");
    let on_q = b.consume(ch, "q", "on-q", false, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    b.send(ch, "", "q", "m0").await;
    assert!(
        matches!(b.quiet(on_q).await, Next::Empty),
        "the get fills the limit"
    );
    b.ack(ch, got.tag, false).await.unwrap();
    assert!(
        matches!(b.quiet(on_q).await, Next::Empty),
        "acking the get does not empty it"
    );
    assert_eq!(b.depth("q").await, Some(1));
    b.qos(ch, 0, true).await.unwrap();
    assert_eq!(b.next(on_q).await.msg().text(), "m0");
}

/// A quorum queue does not ask the channel's limiter before it delivers, but the ack of its
/// delivery is taken off the limiter's count: a classic consumer beside it is not held back by
/// the quorum delivery, and gets one more when it is acked.
async fn a_global_limit_counts_quorum_deliveries_only_when_they_are_acked(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    quorum_queue(b, ch, "qq").await;
    let on_qq = b.consume(ch, "qq", "on-qq", false, false).await.unwrap();
    let on_q = b.consume(ch, "q", "on-q", false, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    b.send(ch, "", "qq", "quorum").await;
    let quorum = b.next(on_qq).await.msg();
    for n in 0..3 {
        b.send(ch, "", "q", &format!("m{n}")).await;
    }
    let first = b.next(on_q).await.msg();
    assert_eq!(first.text(), "m0", "the quorum delivery takes no room");
    assert!(matches!(b.quiet(on_q).await, Next::Empty), "held at 1");
    b.ack(ch, quorum.tag, false).await.unwrap();
    assert_eq!(b.next(on_q).await.msg().text(), "m1", "its ack makes room");
    assert!(
        matches!(b.quiet(on_q).await, Next::Empty),
        "held at 1 again"
    );
    b.ack(ch, first.tag, true).await.unwrap();
    assert_eq!(b.next(on_q).await.msg().text(), "m2");
}

/// A classic queue asks the channel's limiter before it delivers to any consumer, one that
/// does not ack included (rabbit_limiter's `can_send`; only the count skips it): with the
/// channel's global limit reached, a no-ack consumer waits too.
async fn a_global_limit_reached_holds_no_ack_consumers_back_too(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "acked").await;
    b.queue(ch, "free").await;
    let acking = b
        .consume(ch, "acked", "acking", false, false)
        .await
        .unwrap();
    let no_ack = b.consume(ch, "free", "no-ack", true, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    b.send(ch, "", "free", "f0").await;
    assert_eq!(b.next(no_ack).await.msg().text(), "f0", "under the limit");
    b.send(ch, "", "acked", "a0").await;
    let held = b.next(acking).await.msg();
    b.send(ch, "", "free", "f1").await;
    assert!(
        matches!(b.quiet(no_ack).await, Next::Empty),
        "the limit is reached"
    );
    b.ack(ch, held.tag, false).await.unwrap();
    assert_eq!(b.next(no_ack).await.msg().text(), "f1");
}

/// The limiter's count stays at 0 once an ack takes it there, but may go below 0 when one
/// ack takes more than it holds. A transaction's acks reach the limiter at the commit, the
/// consecutive ones together (rabbit_channel's `ack_cons`): two acks that one by one would
/// stop at 0 take it to -1 at a commit, which lets two more deliveries through, not one.
async fn a_commit_tells_the_limiter_of_its_acks_together(b: &mut impl Amqp) {
    let c = b.connection().await;
    let publisher = b.channel(c).await;
    b.queue(publisher, "q").await;
    quorum_queue(b, publisher, "qq").await;
    let ch = b.tx_channel(c).await;
    let on_qq = b.consume(ch, "qq", "on-qq", false, false).await.unwrap();
    let on_q = b.consume(ch, "q", "on-q", false, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    b.send(publisher, "", "qq", "quorum").await;
    let quorum = b.next(on_qq).await.msg();
    for n in 0..3 {
        b.send(publisher, "", "q", &format!("m{n}")).await;
    }
    let first = b.next(on_q).await.msg();
    assert!(matches!(b.quiet(on_q).await, Next::Empty), "held at 1");
    b.ack(ch, quorum.tag, false).await.unwrap();
    b.ack(ch, first.tag, false).await.unwrap();
    assert!(
        matches!(b.quiet(on_q).await, Next::Empty),
        "not before the commit"
    );
    b.tx_commit(ch).await.unwrap();
    assert_eq!(b.next(on_q).await.msg().text(), "m1");
    assert_eq!(b.next(on_q).await.msg().text(), "m2");
}

/// RabbitMQ 3.10 lifts a channel's global prefetch limit when the channel sets a per-consumer
/// one, whatever its count (found by the differential test, probed).
async fn a_per_consumer_qos_lifts_the_global_limit(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    quorum_queue(b, ch, "qq").await;
    for n in 0..4 {
        b.send(ch, "", "q", &format!("m{n}")).await;
    }
    b.qos(ch, 1, true).await.unwrap();
    let on_q = b.consume(ch, "q", "on-q", false, false).await.unwrap();
    assert_eq!(b.next(on_q).await.msg().text(), "m0");
    assert!(matches!(b.quiet(on_q).await, Next::Empty), "held at 1");
    // The consumer's own prefetch stays unlimited: it gets the rest at once.
    b.qos(ch, 2, false).await.unwrap();
    for n in 1..4 {
        assert_eq!(b.next(on_q).await.msg().text(), format!("m{n}"));
    }
    // And a quorum queue takes a consumer again, until the channel sets a global limit anew.
    b.consume(ch, "qq", "on-qq", false, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    let refused = b.consume(ch, "qq", "late", false, false).await;
    assert_eq!(refused.map(drop).map_err(|r| r.code), Err(540));
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

/// RabbitMQ drops expired heads after every message it hands out, so a message that expired
/// behind another is dropped (here dead-lettered) when it comes to the head, not delivered
/// next (found by the differential test, with `expiration: 0`).
async fn an_expired_message_behind_a_delivered_one_is_dropped_not_delivered(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    let args = table(&[("x-dead-letter-exchange", s("dlx"))]);
    b.queue_declare(ch, "q", QFlags::default(), args)
        .await
        .unwrap();
    b.send(ch, "", "q", "first").await;
    let expiring = Properties {
        expiration: Some("0".into()),
        ..Properties::default()
    };
    b.publish(ch, "", "q", false, expiring.clone(), "second")
        .await
        .unwrap();
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    assert_eq!(b.next(sub).await.msg().text(), "first");
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    assert_eq!(b.depth_becomes("dead", Some(1)).await, Some(1));
    assert_eq!(b.depth("q").await, Some(0));
    // `basic.get` too: the count left is taken after the expired head is gone.
    b.queue(ch, "g").await;
    b.send(ch, "", "g", "first").await;
    b.publish(ch, "", "g", false, expiring, "second")
        .await
        .unwrap();
    let (got, left) = b.get(ch, "g", true).await.unwrap().unwrap();
    assert_eq!((got.text().as_str(), left), ("first", 0));
}

/// A classic queue's consumer that ran out of credit keeps its turn (unless a message was
/// offered to it meanwhile: see
/// `a_classic_queue_sends_a_consumer_it_found_without_credit_to_the_back`); a quorum queue's leaves
/// rabbit_fifo's service queue and rejoins it at the back when a settle gives it credit back
/// (found by the consumer differential test, probed).
async fn a_quorum_consumer_given_credit_back_rejoins_the_round_robin_at_the_back(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "cq").await;
    quorum_queue(b, ch, "qq").await;
    for (queue, next) in [("cq", "a"), ("qq", "b")] {
        b.qos(ch, 1, false).await.unwrap();
        let a = b
            .consume(ch, queue, &format!("{queue}-a"), false, false)
            .await
            .unwrap();
        b.qos(ch, 2, false).await.unwrap();
        let bb = b
            .consume(ch, queue, &format!("{queue}-b"), false, false)
            .await
            .unwrap();
        b.send(ch, "", queue, "m1").await;
        let m1 = b.next(a).await.msg();
        b.send(ch, "", queue, "m2").await;
        let m2 = b.next(bb).await.msg();
        assert_eq!((m1.text(), m2.text()), ("m1".into(), "m2".into()));
        b.ack(ch, m2.tag, true).await.unwrap();
        b.send(ch, "", queue, "m3").await;
        let (to, other) = if next == "a" { (a, bb) } else { (bb, a) };
        assert_eq!(b.next(to).await.msg().text(), "m3", "{queue}");
        assert!(matches!(b.quiet(other).await, Next::Empty), "{queue}");
        b.cancel(ch, a).await.unwrap();
        b.cancel(ch, bb).await.unwrap();
    }
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

async fn exclusive_consumer_keeps_others_out(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let _only = b.consume(ch, "q", "only", false, true).await.unwrap();
    let other = b.channel(c).await;
    let error = b
        .consume(other, "q", "late", false, false)
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".to_owned()
        )
    );
}

/// A connection error returns the messages of the channel that caused it first: a quorum
/// queue serves that channel's returns before those of the connection's other channels
/// (RabbitMQ 3.10, probed).
async fn a_connection_error_returns_the_failing_channels_messages_first(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    for queue in ["qq", "other"] {
        quorum_queue(b, ch, queue).await;
    }
    for text in ["m0", "m1", "m2"] {
        b.send(ch, "", "qq", text).await;
    }
    let doomed = b.connection().await;
    let first = b.channel(doomed).await;
    let second = b.channel(doomed).await;
    b.get(first, "qq", false).await.unwrap().unwrap();
    b.get(second, "qq", false).await.unwrap().unwrap();
    // `if-unused` on a quorum queue is a connection error (540).
    let error = b
        .queue_delete(second, "other", true, false)
        .await
        .unwrap_err();
    assert_eq!(error.code, 540);
    // The returns are in the background on RabbitMQ.
    assert_eq!(b.depth_becomes("qq", Some(3)).await, Some(3));
    assert_eq!(b.drain(ch, "qq").await, ["m1", "m0", "m2"]);
}

/// RabbitMQ's quorum queues ignore a consumer's `exclusive` flag (rabbitmq-website#1973):
/// both consumers are accepted, whichever came first, and share the messages round-robin.
async fn a_quorum_queue_ignores_consumer_exclusivity(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    quorum_queue(b, ch, "qq").await;
    let first = b.consume(ch, "qq", "first", true, true).await.unwrap();
    let other = b.channel(c).await;
    let second = b.consume(other, "qq", "second", true, true).await.unwrap();
    let third = b.consume(other, "qq", "third", true, false).await.unwrap();
    for n in 0..3 {
        b.send(ch, "", "qq", &n.to_string()).await;
    }
    let bodies = [
        b.next(first).await.msg().text(),
        b.next(second).await.msg().text(),
        b.next(third).await.msg().text(),
    ];
    assert_eq!(bodies, ["0", "1", "2"]);
}

async fn basic_get_takes_one_message_with_the_count_left(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    assert!(b.get(ch, "q", false).await.unwrap().is_none());
    for n in 0..3 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let (first, left) = b.get(ch, "q", false).await.unwrap().unwrap();
    assert_eq!(
        (first.text().as_str(), left, first.tag, first.redelivered),
        ("0", 2, 1, false)
    );
    b.reject(ch, first.tag, true).await.unwrap();
    let (again, left) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!(
        (again.text().as_str(), left, again.tag, again.redelivered),
        ("0", 2, 2, true)
    );
    let error = b.get(ch, "missing", false).await.unwrap_err();
    assert_eq!(error.code, 404);
}

async fn ack_multiple_settles_every_tag_up_to_it(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..4 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(b.next(sub).await.msg().tag);
    }
    assert_eq!(tags, [1, 2, 3, 4]);
    b.ack(ch, 3, true).await.unwrap();
    b.close_channel(ch).await;
    let ch = b.channel(c).await;
    assert_eq!(b.drain(ch, "q").await, ["3"]);
}

async fn requeued_messages_go_back_to_their_original_position(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..4 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let (zero, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    let (one, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    b.nack(ch, one.tag, false, true).await.unwrap();
    b.nack(ch, zero.tag, false, true).await.unwrap();
    let mut got = Vec::new();
    while let Some((msg, _)) = b.get(ch, "q", true).await.unwrap() {
        got.push((msg.text(), msg.redelivered));
    }
    let expected: Vec<(String, bool)> = [("0", true), ("1", true), ("2", false), ("3", false)]
        .into_iter()
        .map(|(t, r)| (t.to_owned(), r))
        .collect();
    assert_eq!(got, expected);
}

/// A `basic.get`'s deliveries have no consumer tag, so a multiple nack settles them in a batch
/// before any consumer's (probed on 3.10.8): a quorum queue, which puts nacked messages at its
/// back in the order they come back, then serves the got message first; a classic queue puts
/// each back where it was. (Found by the model-based test, whose model settled in tag order.)
async fn a_multiple_nack_puts_gets_back_before_a_consumers_deliveries(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "classic").await;
    quorum_queue(b, ch, "quorum").await;
    b.qos(ch, 1, false).await.unwrap();
    for (queue, next) in [("classic", "m1"), ("quorum", "m2")] {
        b.send(ch, "", queue, "m1").await;
        b.send(ch, "", queue, "m2").await;
        let sub = b.consume(ch, queue, queue, false, false).await.unwrap();
        let delivered = b.next(sub).await.msg();
        assert_eq!(delivered.text(), "m1", "{queue}");
        let (got, _) = b.get(ch, queue, false).await.unwrap().unwrap();
        assert_eq!(got.text(), "m2", "{queue}");
        b.nack(ch, got.tag, true, true).await.unwrap();
        let again = b.next(sub).await.msg();
        assert_eq!(
            (again.text().as_str(), again.redelivered),
            (next, true),
            "{queue}"
        );
        b.ack(ch, again.tag, false).await.unwrap();
        b.cancel(ch, sub).await.unwrap();
    }
}

/// RabbitMQ's channel settles a `basic.recover` or a multiple nack in batches, one per queue
/// and consumer tag (rabbit_channel's foreach_per_queue), and the queue runs after each: with
/// two consumers on one queue, the first consumer's messages are redelivered round-robin
/// before the second's come back.
async fn a_channel_returns_each_consumers_messages_in_its_own_batch(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let first = b.consume(ch, "q", "a", false, false).await.unwrap();
    let second = b.consume(ch, "q", "b", false, false).await.unwrap();
    for n in 0..4 {
        b.send(ch, "", "q", &format!("m{n}")).await;
    }
    async fn two(b: &mut impl Amqp, sub: harness::Sub) -> Vec<(String, bool, u64)> {
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = b.next(sub).await.msg();
            got.push((m.text(), m.redelivered, m.tag));
        }
        got
    }
    let texts = |got: &[(String, bool, u64)]| -> Vec<String> {
        got.iter().map(|(text, _, _)| text.clone()).collect()
    };
    let (a, s) = (two(b, first).await, two(b, second).await);
    assert_eq!(
        (texts(&a), texts(&s)),
        (
            vec!["m0".to_owned(), "m2".to_owned()],
            vec!["m1".to_owned(), "m3".to_owned()]
        )
    );
    // Batch "a" (m0, m2) goes back and out first: m0 to a, m2 to b; then batch "b" (m1, m3):
    // m1 to a, m3 to b.
    b.recover(ch, true).await.unwrap();
    let (a, s) = (two(b, first).await, two(b, second).await);
    assert_eq!(
        (texts(&a), texts(&s)),
        (
            vec!["m0".to_owned(), "m1".to_owned()],
            vec!["m2".to_owned(), "m3".to_owned()]
        )
    );
    assert!(a.iter().chain(&s).all(|(_, redelivered, _)| *redelivered));
    // The same for a multiple nack that requeues: batch "a" (m0, m1), then batch "b" (m2, m3).
    let last = a.iter().chain(&s).map(|(_, _, tag)| *tag).max().unwrap();
    b.nack(ch, last, true, true).await.unwrap();
    let (a, s) = (two(b, first).await, two(b, second).await);
    assert_eq!(
        (texts(&a), texts(&s)),
        (
            vec!["m0".to_owned(), "m2".to_owned()],
            vec!["m1".to_owned(), "m3".to_owned()]
        )
    );
    let last = a.iter().chain(&s).map(|(_, _, tag)| *tag).max().unwrap();
    b.ack(ch, last, true).await.unwrap();
    assert_eq!(b.depth_becomes("q", Some(0)).await, Some(0));
}

/// A classic queue's consumer offered a message while it had no credit is blocked, and
/// rejoins the round-robin at the back once it has credit again (rabbit_queue_consumers);
/// one that was never offered a message while it had none keeps its turn.
async fn a_classic_queue_sends_a_consumer_it_found_without_credit_to_the_back(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.qos(ch, 1, false).await.unwrap();
    let small = b.consume(ch, "q", "a", false, false).await.unwrap();
    b.qos(ch, 3, false).await.unwrap();
    let large = b.consume(ch, "q", "b", false, false).await.unwrap();
    for n in 0..3 {
        b.send(ch, "", "q", &format!("m{n}")).await;
    }
    // m0 to a, m1 to b, then m2 is offered to a first, which has no credit: blocked.
    assert_eq!(b.next(small).await.msg().text(), "m0");
    let texts = [
        b.next(large).await.msg().text(),
        b.next(large).await.msg().text(),
    ];
    assert_eq!(texts, ["m1", "m2"]);
    // The recover returns a's batch (m0) first: a has credit again and rejoins behind b, which
    // takes m0; then b's batch (m1, m2): m1 to a, m2 to b.
    b.recover(ch, true).await.unwrap();
    assert_eq!(b.next(small).await.msg().text(), "m1");
    let texts = [
        b.next(large).await.msg().text(),
        b.next(large).await.msg().text(),
    ];
    assert_eq!(texts, ["m0", "m2"]);
    assert!(matches!(b.quiet(small).await, Next::Empty));
}

async fn recover_requeues_every_unacked_delivery_of_the_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..3 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    b.qos(ch, 10, false).await.unwrap();
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(b.next(sub).await.msg());
    }
    b.ack(ch, first[1].tag, false).await.unwrap();
    b.recover(ch, true).await.unwrap();
    // The two unacked come back, redelivered, in their original order, under new tags.
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(b.next(sub).await.msg());
    }
    let seen: Vec<(String, bool)> = again.iter().map(|m| (m.text(), m.redelivered)).collect();
    assert_eq!(seen, [("0".to_owned(), true), ("2".to_owned(), true)]);
    assert!(again.iter().all(|m| m.tag > first[2].tag));
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    b.ack(ch, again[1].tag, true).await.unwrap();
    assert_eq!(b.depth_becomes("q", Some(0)).await, Some(0));

    // basic.get deliveries are unacked deliveries of the channel too.
    let getter = b.channel(c).await;
    b.queue(getter, "g").await;
    b.send(getter, "", "g", "x").await;
    let (got, _) = b.get(getter, "g", false).await.unwrap().unwrap();
    assert!(!got.redelivered);
    b.recover(getter, true).await.unwrap();
    let (back, left) = b.get(getter, "g", true).await.unwrap().unwrap();
    assert_eq!(
        (back.text(), back.redelivered, left),
        ("x".to_owned(), true, 0)
    );

    // RabbitMQ does not implement requeue = false: 540, and the connection closes.
    let error = b.recover(getter, false).await.unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (540, "NOT_IMPLEMENTED - requeue=false")
    );
    assert!(!b.channel_open(ch).await);
}

async fn unknown_or_double_ack_is_406_and_closes_the_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.send(ch, "", "q", "m").await;
    b.send(ch, "", "q", "n").await;
    let (msg, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    b.ack(ch, msg.tag, false).await.unwrap();
    let (held, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    let error = b.ack(ch, msg.tag, false).await.unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 1")
    );
    assert!(!b.channel_open(ch).await);
    // Nothing lost: the closed channel's unacked message is back.
    assert_eq!(held.text(), "n");
    assert_eq!(b.depth_becomes("q", Some(1)).await, Some(1));
    let ch = b.channel(c).await;
    let error = b.ack(ch, 99, false).await.unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 99")
    );
}

async fn closing_a_channel_requeues_but_cancel_does_not(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.send(ch, "", "q", "m").await;
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let msg = b.next(sub).await.msg();
    b.cancel(ch, sub).await.unwrap();
    assert_eq!(b.depth("q").await, Some(0), "cancel keeps it unacked");
    b.close_channel(ch).await;
    assert_eq!(b.depth_becomes("q", Some(1)).await, Some(1));
    let ch = b.channel(c).await;
    let (again, _) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!((again.text(), again.redelivered), (msg.text(), true));
}

async fn closing_a_connection_requeues(b: &mut impl Amqp) {
    let admin = b.connection().await;
    let ach = b.channel(admin).await;
    b.queue(ach, "q").await;
    b.send(ach, "", "q", "m").await;
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let _msg = b.next(sub).await.msg();
    assert_eq!(b.depth("q").await, Some(0));
    b.close_connection(c).await;
    assert_eq!(b.depth_becomes("q", Some(1)).await, Some(1));
}

async fn deleting_a_queue_cancels_its_consumers(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let sub = b.consume(ch, "q", "c", false, false).await.unwrap();
    let other = b.channel(c).await;
    assert_eq!(b.queue_delete(other, "q", false, false).await.unwrap(), 0);
    assert!(matches!(b.next(sub).await, Next::Ended));
    assert!(
        b.channel_open(ch).await,
        "a broker cancel does not close the channel"
    );
}

async fn properties_and_headers_arrive_intact(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let headers = table(&[
        ("text", s("x")),
        ("n", i(-5)),
        ("flag", FieldValue::Bool(true)),
        ("list", FieldValue::Array(vec![s("a"), i(2)])),
        ("nested", FieldValue::Table(table(&[("k", s("v"))]))),
        ("at", FieldValue::Timestamp(1_700_000_000)),
    ]);
    let properties = Properties {
        content_type: Some("application/json".into()),
        content_encoding: Some("identity".into()),
        headers: Some(headers),
        delivery_mode: Some(2),
        priority: Some(3),
        correlation_id: Some("corr".into()),
        reply_to: Some("replies".into()),
        expiration: Some("60000".into()),
        message_id: Some("id-1".into()),
        timestamp: Some(1_700_000_001),
        kind: Some("Kind".into()),
        user_id: Some("guest".into()),
        app_id: Some("tests".into()),
        cluster_id: Some("deprecated".into()),
    };
    b.publish(ch, "", "q", false, properties.clone(), "{}")
        .await
        .unwrap();
    let sub = b.consume(ch, "q", "c", true, false).await.unwrap();
    let msg = b.next(sub).await.msg();
    assert_eq!(msg.properties, properties);
    assert_eq!(msg.body, b"{}");
}

/// Every AMQP field type arrives as it was sent: RabbitMQ passes a table through, and a
/// consumer that checks a header's wire type (a Java client's `Integer` against `Long`, a Go
/// type switch) must see the publisher's.
async fn header_values_keep_their_amqp_types(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let headers = table(&[
        ("b", FieldValue::I8(-5)),
        ("B", FieldValue::U8(200)),
        ("s", FieldValue::I16(-300)),
        ("u", FieldValue::U16(60_000)),
        ("I", FieldValue::I32(-70_000)),
        ("i", FieldValue::U32(4_000_000_000)),
        ("l", FieldValue::I64(-5_000_000_000)),
        ("f", FieldValue::F32(1.5)),
        ("d", FieldValue::F64(2.25)),
        (
            "D",
            FieldValue::Decimal {
                scale: 2,
                value: 12_345,
            },
        ),
        ("S", s("text")),
        (
            "S-not-utf8",
            FieldValue::StringBytes(vec![0xFF, 0xFE].into()),
        ),
        ("x", FieldValue::Bytes(vec![1, 2].into())),
        ("T", FieldValue::Timestamp(1_700_000_000)),
        ("V", FieldValue::Void),
        ("t", FieldValue::Bool(true)),
        (
            "A",
            FieldValue::Array(vec![
                FieldValue::I32(7),
                FieldValue::I16(8),
                FieldValue::F32(0.5),
            ]),
        ),
        ("F", FieldValue::Table(table(&[("n", FieldValue::U8(1))]))),
    ]);
    let properties = Properties {
        headers: Some(headers),
        ..Properties::default()
    };
    b.publish(ch, "", "q", false, properties.clone(), "m")
        .await
        .unwrap();
    let sub = b.consume(ch, "q", "c", true, false).await.unwrap();
    assert_eq!(b.next(sub).await.msg().properties, properties);
}

/// RabbitMQ (3.10) matches a header against a binding's argument by value, whatever their
/// field types (Erlang's `==`: an integer of any width, a float, a double and a timestamp
/// equal the same number; a long string and a byte array the same bytes; a decimal only a
/// decimal); and it compares a redeclared argument by type class and value.
async fn headers_match_by_value_and_arguments_by_type_class(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "h", "headers").await;
    for queue in ["ints", "floats", "texts"] {
        b.queue(ch, queue).await;
    }
    let bindings = [
        ("ints", ("n", i(1))),
        ("floats", ("r", FieldValue::F64(1.5))),
        ("texts", ("t", s("a"))),
    ];
    for (queue, argument) in bindings {
        b.queue_bind(ch, queue, "h", "", table(&[argument]))
            .await
            .unwrap();
    }
    let cases = [
        ("byte", ("n", FieldValue::I8(1))),
        ("unsignedint", ("n", FieldValue::U32(1))),
        ("double-one", ("n", FieldValue::F64(1.0))),
        (
            "decimal-one",
            ("n", FieldValue::Decimal { scale: 0, value: 1 }),
        ),
        ("timestamp-one", ("n", FieldValue::Timestamp(1))),
        ("text-one", ("n", s("1"))),
        ("float", ("r", FieldValue::F32(1.5))),
        ("long-two", ("r", i(2))),
        ("binary", ("t", FieldValue::Bytes(b"a".to_vec().into()))),
        ("array", ("t", FieldValue::Array(vec![s("a")]))),
    ];
    let cases = cases.map(|(body, header)| (body, table(&[header])));
    publish_with_headers(b, ch, "h", cases).await;
    let got = [
        b.drain(ch, "ints").await,
        b.drain(ch, "floats").await,
        b.drain(ch, "texts").await,
    ];
    assert_eq!(
        got,
        [
            vec!["byte", "unsignedint", "double-one", "timestamp-one"],
            vec!["float"],
            vec!["binary"],
        ]
    );

    let ttl = |value| table(&[("x-message-ttl", value)]);
    b.queue_declare(ch, "t", QFlags::default(), ttl(FieldValue::I16(1000)))
        .await
        .unwrap();
    b.queue_declare(ch, "t", QFlags::default(), ttl(i(1000)))
        .await
        .unwrap();
    let error = b
        .queue_declare(ch, "t", QFlags::default(), FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(
        norm(&error.text),
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 't' in vhost '/': received none but current is the value '1000' of type 'short'"
    );
}

async fn single_active_consumer_takes_everything_until_it_goes(b: &mut impl Amqp) {
    let c = b.connection().await;
    let first = b.channel(c).await;
    let second = b.channel(c).await;
    let sac = table(&[("x-single-active-consumer", FieldValue::Bool(true))]);
    b.queue_declare(first, "q", QFlags::default(), sac)
        .await
        .unwrap();
    let one = b.consume(first, "q", "one", false, false).await.unwrap();
    let two = b.consume(second, "q", "two", false, false).await.unwrap();
    for n in 0..3 {
        b.send(second, "", "q", &n.to_string()).await;
    }
    // No round-robin: the first consumer gets everything, the second waits.
    let mut tags = Vec::new();
    for n in 0..3 {
        let msg = b.next(one).await.msg();
        assert_eq!(msg.text(), n.to_string());
        tags.push(msg.tag);
    }
    assert!(matches!(b.quiet(two).await, Next::Empty));
    // The active consumer's channel closes with two deliveries unacked: they are requeued and
    // the next consumer, now active, gets them, then what comes after.
    b.ack(first, tags[0], false).await.unwrap();
    b.close_channel(first).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let msg = b.next(two).await.msg();
        got.push((msg.text(), msg.redelivered));
    }
    assert_eq!(got, [("1".to_owned(), true), ("2".to_owned(), true)]);
    b.send(second, "", "q", "3").await;
    assert_eq!(b.next(two).await.msg().text(), "3");
    // A cancel hands over too, while the cancelled consumer's deliveries stay unacked.
    let three = b.consume(second, "q", "three", false, false).await.unwrap();
    b.send(second, "", "q", "4").await;
    assert_eq!(b.next(two).await.msg().text(), "4");
    b.cancel(second, two).await.unwrap();
    b.send(second, "", "q", "5").await;
    assert_eq!(b.next(three).await.msg().text(), "5");
}

/// Even with no consumer yet (RabbitMQ 3.10's `exclusive_consume_unavailable`; found by the
/// differential test, probed). A quorum queue ignores the flag, single active consumer or not.
async fn a_single_active_consumer_queue_refuses_exclusive_consumers(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let sac = || table(&[("x-single-active-consumer", FieldValue::Bool(true))]);
    b.queue_declare(ch, "q", QFlags::default(), sac())
        .await
        .unwrap();
    let error = b.consume(ch, "q", "only", false, true).await.unwrap_err();
    assert_eq!(
        (error.code, norm(&error.text)),
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".to_owned()
        )
    );
    let ch = b.channel(c).await;
    let plain = b.consume(ch, "q", "plain", false, false).await.unwrap();
    b.send(ch, "", "q", "m").await;
    assert_eq!(b.next(plain).await.msg().text(), "m");
    let mut quorum = sac();
    quorum.insert("x-queue-type".into(), s("quorum"));
    b.queue_declare(ch, "qq", DURABLE, quorum).await.unwrap();
    b.consume(ch, "qq", "exclusive", false, true).await.unwrap();
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

/// When the active consumer goes, a classic queue makes the highest `x-priority` left active
/// (RabbitMQ 3.10's rabbit_queue_consumers:get_consumer), a quorum queue the earliest
/// registered whatever its priority (rabbit_fifo's waiting list). Found by the differential
/// test, probed. The queue is empty at the cancel: with a message waiting, 3.10 does not hand
/// it over (see the README's differences).
async fn the_next_single_active_consumer_is_chosen_by_priority_on_a_classic_queue(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let sac = table(&[("x-single-active-consumer", FieldValue::Bool(true))]);
    b.queue_declare(ch, "q", QFlags::default(), sac.clone())
        .await
        .unwrap();
    let mut quorum = sac;
    quorum.insert("x-queue-type".into(), s("quorum"));
    b.queue_declare(ch, "qq", DURABLE, quorum).await.unwrap();
    let priority = |p: i64| table(&[("x-priority", i(p))]);
    for (queue, successor) in [("q", "high"), ("qq", "second")] {
        let ch = b.channel(c).await;
        let first = b
            .consume_with(ch, queue, "first", false, false, priority(0))
            .await
            .unwrap();
        let second = b
            .consume_with(ch, queue, "second", false, false, priority(0))
            .await
            .unwrap();
        let high = b
            .consume_with(ch, queue, "high", false, false, priority(5))
            .await
            .unwrap();
        // The first registered is active, whatever the priorities of those after it.
        b.send(ch, "", queue, "before").await;
        let msg = b.next(first).await.msg();
        assert_eq!(msg.text(), "before");
        b.ack(ch, msg.tag, false).await.unwrap();
        b.cancel(ch, first).await.unwrap();
        b.send(ch, "", queue, "after").await;
        let (taker, idle) = if successor == "high" {
            (high, second)
        } else {
            (second, high)
        };
        assert_eq!(b.next(taker).await.msg().text(), "after", "{queue}");
        assert!(matches!(b.quiet(idle).await, Next::Empty), "{queue}");
        b.close_channel(ch).await;
    }
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

/// A quorum queue's consumer that gets credit back rejoins the round-robin at the back, but a
/// single active consumer has no round-robin to rejoin: it stays active (probed on 3.10.8;
/// found in review: broker-mem handed over to the waiting consumer at the ack).
async fn a_quorum_single_active_consumer_stays_active_when_its_credit_comes_back(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let active = b.channel(c).await;
    let waiting = b.channel(c).await;
    let args = table(&[
        ("x-queue-type", s("quorum")),
        ("x-single-active-consumer", FieldValue::Bool(true)),
    ]);
    b.queue_declare(active, "qq", DURABLE, args).await.unwrap();
    b.qos(active, 1, false).await.unwrap();
    let first = b
        .consume(active, "qq", "first", false, false)
        .await
        .unwrap();
    let second = b
        .consume(waiting, "qq", "second", false, false)
        .await
        .unwrap();
    for n in 0..3 {
        b.send(waiting, "", "qq", &n.to_string()).await;
    }
    for n in 0..3 {
        let msg = b.next(first).await.msg();
        assert_eq!(msg.text(), n.to_string());
        b.ack(active, msg.tag, false).await.unwrap();
    }
    assert!(matches!(b.quiet(second).await, Next::Empty));
    b.queue_delete(waiting, "qq", false, false).await.unwrap();
}

async fn priority_queue_delivers_higher_priorities_first(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue_declare(
        ch,
        "q",
        QFlags::default(),
        table(&[("x-max-priority", i(5))]),
    )
    .await
    .unwrap();
    let with_priority = |priority: Option<u8>| Properties {
        priority,
        ..Properties::default()
    };
    // Above the maximum counts as the maximum; none counts as 0; equal priorities keep order.
    let published = [
        ("low", None),
        ("mid", Some(3)),
        ("high", Some(5)),
        ("over", Some(9)),
        ("mid-2", Some(3)),
        ("zero", Some(0)),
    ];
    for (body, priority) in published {
        b.publish(ch, "", "q", false, with_priority(priority), body)
            .await
            .unwrap();
    }
    // A requeued message goes back to its place among its priority.
    let (high, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    let (over, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    assert_eq!((high.text(), over.text()), ("high".into(), "over".into()));
    b.reject(ch, high.tag, true).await.unwrap();
    b.ack(ch, over.tag, false).await.unwrap();
    // The priority is delivered as published, not as capped.
    let (again, _) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!((again.text(), again.redelivered), ("high".into(), true));
    assert_eq!(again.properties.priority, Some(5));
    assert_eq!(b.drain(ch, "q").await, ["mid", "mid-2", "low", "zero"]);
}

async fn queue_expires_when_unused(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let expires = || table(&[("x-expires", i(300))]);
    b.queue_declare(ch, "idle", QFlags::default(), expires())
        .await
        .unwrap();
    b.queue_declare(ch, "used", QFlags::default(), expires())
        .await
        .unwrap();
    // Publishing does not count as use; a consumer does.
    b.send(ch, "", "idle", "lost with its queue").await;
    let sub = b.consume(ch, "used", "c", true, false).await.unwrap();
    // RabbitMQ's expiry timer fires a little late.
    b.sleep_ms(1_000).await;
    assert_eq!(b.depth("idle").await, None);
    assert_eq!(b.depth("used").await, Some(0));
    // Once its last consumer is gone, the queue's time starts.
    b.cancel(ch, sub).await.unwrap();
    b.sleep_ms(1_000).await;
    assert_eq!(b.depth("used").await, None);
    // x-expires must be positive.
    let zero = table(&[("x-expires", i(0))]);
    let refused = b.queue_declare(ch, "zero", QFlags::default(), zero).await;
    assert_eq!(refused.map_err(|r| r.code), Err(406));
}

async fn priority_and_single_active_arguments_are_checked(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let code = |result: harness::R<(String, u32, u32)>| result.map(drop).map_err(|r| r.code);
    let too_high = table(&[("x-max-priority", i(300))]);
    assert_eq!(
        code(b.queue_declare(ch, "q", QFlags::default(), too_high).await),
        Err(406)
    );
    let ch = b.channel(c).await;
    let not_a_flag = table(&[("x-single-active-consumer", i(1))]);
    assert_eq!(
        code(
            b.queue_declare(ch, "q", QFlags::default(), not_a_flag)
                .await
        ),
        Err(406)
    );
    // RabbitMQ 3.10's quorum queues have no priorities, and no basic.get with a single active
    // consumer.
    let ch = b.channel(c).await;
    let durable = DURABLE;
    let quorum = |extra: (&str, FieldValue)| table(&[("x-queue-type", s("quorum")), extra]);
    let prioritised = quorum(("x-max-priority", i(5)));
    assert_eq!(
        code(b.queue_declare(ch, "qq", durable, prioritised).await),
        Err(406)
    );
    let ch = b.channel(c).await;
    let sac = quorum(("x-single-active-consumer", FieldValue::Bool(true)));
    b.queue_declare(ch, "qq", durable, sac).await.unwrap();
    let refused = b.get(ch, "qq", true).await.map(drop).map_err(|r| r.code);
    assert_eq!(refused, Err(405));
    let ch = b.channel(c).await;
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

async fn headers_exchange_with_x_matches_x_headers_too(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "h", "headers").await;
    for queue in ["all", "all-with-x", "any-with-x"] {
        b.queue(ch, queue).await;
    }
    let binding = |x_match: &str| {
        table(&[
            ("x-match", s(x_match)),
            ("x-tenant", s("acme")),
            ("kind", s("order")),
        ])
    };
    for queue in ["all", "all-with-x", "any-with-x"] {
        b.queue_bind(ch, queue, "h", "", binding(queue))
            .await
            .unwrap();
    }
    let cases = [
        (
            "both",
            table(&[("x-tenant", s("acme")), ("kind", s("order"))]),
        ),
        (
            "kind",
            table(&[("x-tenant", s("other")), ("kind", s("order"))]),
        ),
        ("tenant", table(&[("x-tenant", s("acme"))])),
    ];
    publish_with_headers(b, ch, "h", cases).await;
    // Plain `all` ignores arguments starting with `x-`; the `-with-x` forms match them too.
    assert_eq!(b.drain(ch, "all").await, ["both", "kind"]);
    assert_eq!(b.drain(ch, "all-with-x").await, ["both"]);
    assert_eq!(b.drain(ch, "any-with-x").await, ["both", "kind", "tenant"]);
    // Anything else in x-match is refused when binding, the value printed as Erlang prints
    // RabbitMQ's reading of it (probed on 3.10.8).
    let expected = "expected all, any, all-with-x, or any-with-x";
    let refused = [
        (s("some"), format!("Invalid x-match field value <<\"some\">>; {expected}")),
        (s(""), format!("Invalid x-match field value <<>>; {expected}")),
        (i(1), "Invalid x-match field type long (value 1); expected longstr".to_owned()),
        (FieldValue::Void, "Invalid x-match field type void (value undefined); expected longstr".to_owned()),
        (FieldValue::Bool(true), "Invalid x-match field type bool (value true); expected longstr".to_owned()),
        (FieldValue::F64(1.5), "Invalid x-match field type double (value 1.5); expected longstr".to_owned()),
        (
            FieldValue::Decimal { scale: 2, value: 150 },
            "Invalid x-match field type decimal (value {2,150}); expected longstr".to_owned(),
        ),
        (
            // Short: Erlang breaks a longer term over lines (the README's differences).
            FieldValue::Table(table(&[("a", i(1))])),
            "Invalid x-match field type table (value [{<<\"a\">>,long,1}]); expected longstr"
                .to_owned(),
        ),
        (
            FieldValue::Array(vec![i(1), FieldValue::Array(vec![FieldValue::Bool(false)])]),
            "Invalid x-match field type array (value [{long,1},{array,[{bool,false}]}]); expected longstr".to_owned(),
        ),
    ];
    for (mode, text) in refused {
        let ch = b.channel(c).await;
        let arguments = table(&[("x-match", mode), ("kind", s("order"))]);
        let result = b.queue_bind(ch, "all", "h", "", arguments).await;
        assert_eq!(
            result.map_err(|r| (r.code, r.text)),
            Err((406, format!("PRECONDITION_FAILED - {text}")))
        );
    }
}

async fn consumer_priorities_feed_the_highest_with_credit_first(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    b.qos(ch, 2, false).await.unwrap();
    let priority = |p: i64| table(&[("x-priority", i(p))]);
    let low = b
        .consume_with(ch, "q", "low", false, false, FieldTable::new())
        .await
        .unwrap();
    let high = b
        .consume_with(ch, "q", "high", false, false, priority(10))
        .await
        .unwrap();
    for n in 0..5 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    // The higher priority takes what its prefetch allows; only then does the lower get any.
    let mut from_high = Vec::new();
    for _ in 0..2 {
        from_high.push(b.next(high).await.msg());
    }
    let texts = |msgs: &[harness::Msg]| msgs.iter().map(harness::Msg::text).collect::<Vec<_>>();
    assert_eq!(texts(&from_high), ["0", "1"]);
    let mut from_low = Vec::new();
    for _ in 0..2 {
        from_low.push(b.next(low).await.msg());
    }
    assert_eq!(texts(&from_low), ["2", "3"]);
    assert_eq!(b.depth("q").await, Some(1));
    b.ack(ch, from_high[0].tag, false).await.unwrap();
    assert_eq!(b.next(high).await.msg().text(), "4");
    // With credit on both, the higher priority gets the next.
    b.ack(ch, from_low[0].tag, false).await.unwrap();
    b.ack(ch, from_high[1].tag, false).await.unwrap();
    b.send(ch, "", "q", "5").await;
    assert_eq!(b.next(high).await.msg().text(), "5");
    assert!(matches!(b.quiet(low).await, Next::Empty));
    // x-priority must be an integer.
    let ch = b.channel(c).await;
    let refused = b
        .consume_with(
            ch,
            "q",
            "bad",
            false,
            false,
            table(&[("x-priority", s("high"))]),
        )
        .await;
    assert_eq!(refused.map(drop).map_err(|r| r.code), Err(406));
}

async fn quorum_queues_refuse_a_consumer_under_global_qos_and_ignore_one_set_later(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    quorum_queue(b, ch, "qq").await;
    b.qos(ch, 5, true).await.unwrap();
    // 540, a connection error.
    let refused = b.consume(ch, "qq", "c", false, false).await;
    assert_eq!(refused.map(drop).map_err(|r| r.code), Err(540));
    // A consumer that started before the global qos is not held back by it: a quorum queue's
    // consumers take credit from the queue, not from the channel's limiter.
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let sub = b.consume(ch, "qq", "c", false, false).await.unwrap();
    b.qos(ch, 1, true).await.unwrap();
    for n in 0..2 {
        b.send(ch, "", "qq", &format!("m{n}")).await;
    }
    let texts = [
        b.next(sub).await.msg().text(),
        b.next(sub).await.msg().text(),
    ];
    assert_eq!(texts, ["m0", "m1"]);
    b.queue_delete(ch, "qq", false, false).await.unwrap();
}

async fn cc_and_bcc_headers_add_routing_keys(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "x", "direct").await;
    b.exchange(ch, "dlx", "fanout").await;
    b.queue(ch, "dead").await;
    b.bind(ch, "dead", "dlx", "").await;
    let dead_letters = || table(&[("x-dead-letter-exchange", s("dlx"))]);
    for queue in ["a", "cc", "bcc", "other"] {
        b.queue_declare(ch, queue, QFlags::default(), dead_letters())
            .await
            .unwrap();
        b.bind(ch, queue, "x", queue).await;
    }
    let list = |keys: &[&str]| FieldValue::Array(keys.iter().map(|k| s(k)).collect());
    let headers = table(&[
        ("CC", list(&["cc"])),
        ("BCC", list(&["bcc"])),
        ("note", i(1)),
    ]);
    let properties = Properties {
        headers: Some(headers),
        ..Properties::default()
    };
    b.publish(ch, "x", "a", false, properties, "m")
        .await
        .unwrap();
    // Every queue named gets one copy under the published routing key; BCC is gone, CC stays.
    let kept = table(&[("CC", list(&["cc"])), ("note", i(1))]);
    for queue in ["a", "cc", "bcc"] {
        let (msg, _) = b.get(ch, queue, queue != "cc").await.unwrap().unwrap();
        assert_eq!(msg.routing_key, "a", "{queue}");
        assert_eq!(msg.properties.headers.as_ref(), Some(&kept), "{queue}");
        if queue == "cc" {
            b.reject(ch, msg.tag, false).await.unwrap();
        }
    }
    assert_eq!(b.depth("other").await, Some(0));
    // Dead-lettered, its x-death lists the CC keys with the routing key.
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(
        deaths(&dead),
        [death(1, "rejected", "cc", "x", &["a", "cc"])]
    );
    // CC must be an array.
    let bad = Properties {
        headers: Some(table(&[("CC", s("cc"))])),
        ..Properties::default()
    };
    let refused = b.publish(ch, "x", "a", false, bad, "m").await;
    assert_eq!(refused.map(drop).map_err(|r| r.code), Err(406));
}

async fn a_cc_route_keeps_a_message_from_the_alternate_exchange(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "ae", "fanout").await;
    let args = table(&[("alternate-exchange", s("ae"))]);
    b.exchange_declare(ch, "main", "direct", XFlags::default(), args)
        .await
        .unwrap();
    b.queue(ch, "copied").await;
    b.queue(ch, "unrouted").await;
    b.bind(ch, "copied", "main", "copy").await;
    b.bind(ch, "unrouted", "ae", "").await;
    // The routing key routes nowhere, its CC does: routed, so neither the alternate exchange
    // nor a return.
    let cc = table(&[("CC", FieldValue::Array(vec![s("copy")]))]);
    let properties = Properties {
        headers: Some(cc),
        ..Properties::default()
    };
    let published = b
        .publish(ch, "main", "nowhere", true, properties, "m")
        .await
        .unwrap();
    assert_eq!(published.returned, None);
    assert_eq!(b.depth("copied").await, Some(1));
    assert_eq!(b.depth("unrouted").await, Some(0));
}

async fn dead_lettering_reroutes_by_cc_unless_the_queue_names_a_key(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "dlx", "direct").await;
    b.queue(ch, "dead").await;
    b.queue(ch, "also").await;
    b.bind(ch, "dead", "dlx", "dl").await;
    b.bind(ch, "also", "dlx", "also").await;
    let keyed = table(&[
        ("x-dead-letter-exchange", s("dlx")),
        ("x-dead-letter-routing-key", s("dl")),
    ]);
    b.queue_declare(ch, "keyed", QFlags::default(), keyed)
        .await
        .unwrap();
    let plain = table(&[("x-dead-letter-exchange", s("dlx"))]);
    b.queue_declare(ch, "plain", QFlags::default(), plain)
        .await
        .unwrap();
    let cc = || Properties {
        headers: Some(table(&[("CC", FieldValue::Array(vec![s("also")]))])),
        ..Properties::default()
    };
    // Published through an exchange where the CC key routes nowhere.
    b.exchange(ch, "in", "direct").await;
    for queue in ["keyed", "plain"] {
        b.bind(ch, queue, "in", queue).await;
        b.publish(ch, "in", queue, false, cc(), queue)
            .await
            .unwrap();
        let (msg, _) = b.get(ch, queue, false).await.unwrap().unwrap();
        b.reject(ch, msg.tag, false).await.unwrap();
    }
    // The queue's dead-letter routing key replaces every key and drops CC; without one the
    // message goes by its own key and its CC.
    let (dead, _) = b.get(ch, "dead", true).await.unwrap().unwrap();
    assert_eq!(
        (dead.text(), dead.routing_key.as_str()),
        ("keyed".into(), "dl")
    );
    assert_eq!(dead.header("CC"), None);
    let (also, _) = b.get(ch, "also", true).await.unwrap().unwrap();
    assert_eq!(
        (also.text(), also.routing_key.as_str()),
        ("plain".into(), "plain")
    );
    assert_eq!(also.header("CC"), Some(&FieldValue::Array(vec![s("also")])));
    assert_eq!(b.depth("dead").await, Some(0));
    assert_eq!(b.depth("also").await, Some(0));
}

/// A publish on a transactional channel: held, so no confirm.
async fn send_in_tx(b: &mut impl Amqp, ch: harness::Ch, queue: &str, body: &str) {
    let published = b
        .publish(ch, "", queue, false, Properties::default(), body)
        .await
        .expect("publish in a transaction");
    assert!(!published.acked, "a transactional publish is not confirmed");
}

/// RabbitMQ routes a transactional publish when it comes and delivers it at the commit,
/// looking its queues up then (found by the differential test, probed on 3.10.8). The default
/// exchange's route is the routing key (and `CC` keys) as queue names, looked up by nobody
/// before the commit: a queue declared in between takes the message. Through any other
/// exchange the route is made at the publish: a binding made after it does not count.
async fn a_transactional_publish_finds_the_default_exchanges_queue_at_the_commit(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "direct", "direct").await;
    let tx = b.tx_channel(c).await;
    send_in_tx(b, tx, "later", "by name").await;
    let cc = Properties {
        headers: Some(table(&[("CC", FieldValue::Array(vec![s("by-cc")]))])),
        ..Properties::default()
    };
    b.publish(tx, "", "nowhere", false, cc, "by cc")
        .await
        .unwrap();
    b.publish(
        tx,
        "direct",
        "later",
        false,
        Properties::default(),
        "by binding",
    )
    .await
    .unwrap();
    // RabbitMQ's channels are processes of their own: an answer on the transaction's channel
    // shows it has routed the publishes before the other channel changes the topology.
    b.qos(tx, 0, false).await.unwrap();
    b.queue(ch, "later").await;
    b.queue(ch, "by-cc").await;
    b.bind(ch, "later", "direct", "later").await;
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.drain(ch, "later").await, ["by name"]);
    assert_eq!(b.drain(ch, "by-cc").await, ["by cc"]);
    // A queue deleted before the commit takes nothing; declared again, the new one does.
    send_in_tx(b, tx, "later", "again").await;
    b.publish(
        tx,
        "direct",
        "later",
        false,
        Properties::default(),
        "again by binding",
    )
    .await
    .unwrap();
    b.qos(tx, 0, false).await.unwrap();
    b.queue_delete(ch, "later", false, false).await.unwrap();
    b.queue(ch, "later").await;
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.drain(ch, "later").await, ["again", "again by binding"]);
    send_in_tx(b, tx, "later", "lost").await;
    b.queue_delete(ch, "later", false, false).await.unwrap();
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.depth("later").await, None);
}

async fn transactions_hold_publishes_until_commit_and_drop_them_on_rollback(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let tx = b.tx_channel(c).await;
    send_in_tx(b, tx, "q", "one").await;
    assert_eq!(b.depth("q").await, Some(0));
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.depth("q").await, Some(1));
    send_in_tx(b, tx, "q", "two").await;
    b.tx_rollback(tx).await.unwrap();
    send_in_tx(b, tx, "q", "three").await;
    // Still transactional after a commit or a rollback; a close drops what is held.
    b.tx_commit(tx).await.unwrap();
    send_in_tx(b, tx, "q", "four").await;
    b.close_channel(tx).await;
    assert_eq!(b.drain(ch, "q").await, ["one", "three"]);
    // Only a transactional channel commits or rolls back.
    let code = |result: harness::R<()>| result.map_err(|r| r.code);
    assert_eq!(code(b.tx_commit(ch).await), Err(406));
    let ch = b.channel(c).await;
    assert_eq!(code(b.tx_rollback(ch).await), Err(406));
}

/// RabbitMQ 3.10 (found by the differential test, probed): the other publishes and the
/// settles are done, the refused message is dead-lettered where its queue says so, and the
/// commit is a 406 that closes the channel (requeueing what it still had unacked).
/// A commit's publishes reach each queue one by one, as single publishes do: a message that
/// expires at once (`expiration: 0`, no consumer) is dropped before the next asks for room,
/// so a byte limit that two such messages would pass together refuses neither.
async fn a_commit_delivers_its_publishes_one_by_one_and_expired_ones_take_no_room(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let limited = table(&[
        ("x-max-length-bytes", i(5)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(ch, "limited", QFlags::default(), limited)
        .await
        .unwrap();
    let tx = b.tx_channel(c).await;
    let expiring = Properties {
        expiration: Some("0".to_owned()),
        ..Properties::default()
    };
    for body in ["one", "two"] {
        b.publish(tx, "", "limited", false, expiring.clone(), body)
            .await
            .unwrap();
    }
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.depth_becomes("limited", Some(0)).await, Some(0));
}

async fn a_commit_a_queue_refuses_in_part_does_the_rest_and_closes_the_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    dead_letter_target(b, ch).await;
    let limited = table(&[
        ("x-max-length", i(1)),
        ("x-overflow", s("reject-publish-dlx")),
        ("x-dead-letter-exchange", s("dlx")),
    ]);
    b.queue_declare(ch, "limited", QFlags::default(), limited)
        .await
        .unwrap();
    b.queue(ch, "work").await;
    b.queue(ch, "other").await;
    b.send(ch, "", "work", "w1").await;
    b.send(ch, "", "work", "w2").await;
    let tx = b.tx_channel(c).await;
    let (w1, _) = b.get(tx, "work", false).await.unwrap().unwrap();
    let _w2 = b.get(tx, "work", false).await.unwrap().unwrap();
    b.ack(tx, w1.tag, false).await.unwrap();
    send_in_tx(b, tx, "limited", "a").await;
    send_in_tx(b, tx, "limited", "b").await;
    send_in_tx(b, tx, "other", "after").await;
    let error = b.tx_commit(tx).await.unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (406, "PRECONDITION_FAILED - partial tx completion")
    );
    assert_eq!(b.depth_becomes("work", Some(1)).await, Some(1));
    assert_eq!(b.drain(ch, "work").await, ["w2"]);
    assert_eq!(b.drain(ch, "limited").await, ["a"]);
    assert_eq!(b.drain(ch, "other").await, ["after"]);
    assert_eq!(b.depth_becomes("dead", Some(1)).await, Some(1));
    assert_eq!(b.drain(ch, "dead").await, ["b"]);
}

/// RabbitMQ 3.10.8 (probed; found by the differential test): a quorum queue's `reject-publish`
/// refusal reaches only a confirming channel. In a transaction the copy is dropped and the
/// commit is ok, where a classic queue's refusal makes it a 406 `partial tx completion`.
async fn a_full_quorum_queue_drops_a_commits_publish_and_the_commit_is_ok(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let limited = table(&[
        ("x-queue-type", s("quorum")),
        ("x-max-length", i(1)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(ch, "limited", DURABLE, limited)
        .await
        .unwrap();
    b.queue(ch, "other").await;
    // The limit is soft: the second gets in (the queue was not over it), then it is over.
    b.send(ch, "", "limited", "a").await;
    b.send(ch, "", "limited", "b").await;
    assert_eq!(b.depth_becomes("limited", Some(2)).await, Some(2));
    let tx = b.tx_channel(c).await;
    send_in_tx(b, tx, "limited", "c").await;
    send_in_tx(b, tx, "other", "after").await;
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.drain(ch, "other").await, ["after"]);
    assert_eq!(b.drain(ch, "limited").await, ["a", "b"]);
    // The channel is still open and still transactional.
    send_in_tx(b, tx, "other", "again").await;
    b.tx_commit(tx).await.unwrap();
    assert_eq!(b.drain(ch, "other").await, ["again"]);
}

async fn transactional_settles_apply_at_commit_and_return_on_rollback(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    for n in 0..3 {
        b.send(ch, "", "q", &n.to_string()).await;
    }
    let tx = b.tx_channel(c).await;
    b.qos(tx, 1, false).await.unwrap();
    let sub = b.consume(tx, "q", "c", false, false).await.unwrap();
    let first = b.next(sub).await.msg();
    assert_eq!(first.text(), "0");
    // The ack waits for the commit, and so does the credit it gives back.
    b.ack(tx, first.tag, false).await.unwrap();
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    // A rollback makes it unacked again, so it can be acked again.
    b.tx_rollback(tx).await.unwrap();
    assert!(matches!(b.quiet(sub).await, Next::Empty));
    b.ack(tx, first.tag, false).await.unwrap();
    b.tx_commit(tx).await.unwrap();
    let second = b.next(sub).await.msg();
    assert_eq!((second.text(), second.redelivered), ("1".into(), false));
    // Settled in a transaction and closed before the commit: requeued, as if never settled.
    b.reject(tx, second.tag, false).await.unwrap();
    b.close_channel(tx).await;
    assert_eq!(b.depth_becomes("q", Some(2)).await, Some(2));
    let ch = b.channel(c).await;
    let (again, _) = b.get(ch, "q", true).await.unwrap().unwrap();
    assert_eq!((again.text(), again.redelivered), ("1".into(), true));
    // Acking the same tag twice in one transaction is 406, as outside one.
    let tx = b.tx_channel(c).await;
    let (last, _) = b.get(tx, "q", false).await.unwrap().unwrap();
    b.ack(tx, last.tag, false).await.unwrap();
    let twice = b.ack(tx, last.tag, false).await.map_err(|r| r.code);
    assert_eq!(twice, Err(406));
}

async fn dead_lettering_reroutes_by_bcc_too(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "in", "direct").await;
    b.exchange(ch, "dlx", "direct").await;
    let dead_letters = table(&[("x-dead-letter-exchange", s("dlx"))]);
    b.queue_declare(ch, "q", QFlags::default(), dead_letters)
        .await
        .unwrap();
    b.bind(ch, "q", "in", "k").await;
    b.queue(ch, "via-bcc").await;
    b.bind(ch, "via-bcc", "dlx", "bcc-key").await;
    let bcc = Properties {
        headers: Some(table(&[("BCC", FieldValue::Array(vec![s("bcc-key")]))])),
        ..Properties::default()
    };
    b.publish(ch, "in", "k", false, bcc, "m").await.unwrap();
    let (msg, _) = b.get(ch, "q", false).await.unwrap().unwrap();
    assert_eq!(msg.header("BCC"), None);
    b.reject(ch, msg.tag, false).await.unwrap();
    // The BCC key, gone from the headers, still routes the dead-lettered message; x-death
    // does not list it.
    let (dead, _) = b.get(ch, "via-bcc", true).await.unwrap().unwrap();
    assert_eq!(dead.text(), "m");
    assert_eq!(deaths(&dead), [death(1, "rejected", "q", "in", &["k"])]);
}

/// Declare arguments, bad and good, for both queue types: the reply code and exact text of
/// each refusal (probed on RabbitMQ 3.10.8), including which argument is reported when
/// several are wrong, and that arguments RabbitMQ accepts are accepted.
async fn queue_arguments_are_validated_in_rabbitmqs_order_with_its_texts(b: &mut impl Amqp) {
    let b_ = FieldValue::Bool;
    let quorum = |pairs: &[(&str, FieldValue)]| {
        let mut args = table(pairs);
        args.insert("x-queue-type".into(), s("quorum"));
        args
    };
    let classic = |pairs: &[(&str, FieldValue)]| table(pairs);
    let durable = DURABLE;
    let transient = QFlags::default();
    let prefix = "PRECONDITION_FAILED - invalid arg";
    let refused: Vec<(QFlags, FieldTable, String)> = vec![
        (
            transient,
            classic(&[("x-queue-mode", s("fast"))]),
            format!("{prefix} 'x-queue-mode' for queue 'q' in vhost '/': \"unsupported queue mode 'fast'\""),
        ),
        (
            durable,
            quorum(&[("x-queue-mode", s("lazy"))]),
            format!("{prefix} 'x-queue-mode' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            transient,
            classic(&[("x-delivery-limit", i(3))]),
            format!("{prefix} 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"),
        ),
        // Not validated on a type that does not take it: refused for the type.
        (
            transient,
            classic(&[("x-max-in-memory-length", s("abc"))]),
            format!("{prefix} 'x-max-in-memory-length' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"),
        ),
        (
            durable,
            quorum(&[("x-max-in-memory-length", s("abc"))]),
            format!("{prefix} 'x-max-in-memory-length' for queue 'q' in vhost '/': \"expected integer, got longstr\""),
        ),
        (
            transient,
            classic(&[("x-dead-letter-routing-key", s("k"))]),
            format!("{prefix} 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"),
        ),
        (
            transient,
            classic(&[("x-max-length", s("abc"))]),
            format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\""),
        ),
        (
            transient,
            classic(&[("x-max-length", b_(true))]),
            format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got bool\""),
        ),
        (
            transient,
            classic(&[("x-message-ttl", i(315_360_000_001))]),
            format!("{prefix} 'x-message-ttl' for queue 'q' in vhost '/': {{value_too_large,315360000001}}"),
        ),
        // Several wrong: RabbitMQ's fixed order decides, not the table's.
        (
            transient,
            classic(&[
                ("x-max-length", i(10)),
                ("x-queue-mode", s("fast")),
                ("x-expires", i(0)),
            ]),
            format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}"),
        ),
        (
            transient,
            classic(&[("x-max-priority", i(3)), ("x-delivery-limit", i(2)), ("x-expires", i(0))]),
            format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}"),
        ),
        (
            transient,
            classic(&[("x-queue-type", s("bogus")), ("x-expires", i(0))]),
            format!("{prefix} 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'bogus'\""),
        ),
        (
            transient,
            classic(&[("x-overflow", s("bogus"))]),
            format!("{prefix} 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"),
        ),
        (
            transient,
            classic(&[("x-single-active-consumer", s("yes"))]),
            format!("{prefix} 'x-single-active-consumer' for queue 'q' in vhost '/': {{unacceptable_type,longstr}}"),
        ),
        // Arguments before a quorum queue's flags.
        (
            transient,
            quorum(&[("x-expires", i(0))]),
            format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}"),
        ),
        (
            transient,
            quorum(&[("x-max-priority", i(3))]),
            format!("{prefix} 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            durable,
            quorum(&[("x-dead-letter-strategy", s("bogus"))]),
            format!("{prefix} 'x-dead-letter-strategy' for queue 'q' in vhost '/': invalid_dlx_strategy"),
        ),
        (
            durable,
            quorum(&[("x-queue-leader-locator", s("bogus"))]),
            format!("{prefix} 'x-queue-leader-locator' for queue 'q' in vhost '/': invalid_queue_locator_arg"),
        ),
        (
            durable,
            quorum(&[("x-quorum-initial-group-size", i(0))]),
            format!("{prefix} 'x-quorum-initial-group-size' for queue 'q' in vhost '/': {{value_zero,0}}"),
        ),
        (
            transient,
            classic(&[("x-queue-version", i(3))]),
            format!("{prefix} 'x-queue-version' for queue 'q' in vhost '/': \"unsupported queue version '3'\""),
        ),
        (
            transient,
            classic(&[("x-queue-version", i(-1))]),
            format!("{prefix} 'x-queue-version' for queue 'q' in vhost '/': {{value_negative,-1}}"),
        ),
        (
            durable,
            quorum(&[("x-queue-version", i(2))]),
            format!("{prefix} 'x-queue-version' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        // A stream's arguments are refused on both (`x-max-segment-size`, which no type
        // takes, is ignored).
        (
            transient,
            classic(&[("x-max-age", s("1D"))]),
            format!("{prefix} 'x-max-age' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"),
        ),
        (
            transient,
            classic(&[("x-stream-max-segment-size-bytes", i(5))]),
            format!("{prefix} 'x-stream-max-segment-size-bytes' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"),
        ),
        (
            durable,
            quorum(&[("x-initial-cluster-size", i(3))]),
            format!("{prefix} 'x-initial-cluster-size' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        // The first on the wire (lapin writes the keys sorted).
        (
            durable,
            quorum(&[("x-max-age", s("1D")), ("x-max-priority", i(1))]),
            format!("{prefix} 'x-max-age' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        // The other type's argument is refused before an unknown master locator fails.
        (
            transient,
            classic(&[
                ("x-queue-master-locator", s("bogus")),
                ("x-delivery-limit", i(1)),
            ]),
            format!("{prefix} 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"),
        ),
        (
            transient,
            classic(&[("x-dead-letter-exchange", b_(true)), ("x-expires", i(0))]),
            "PRECONDITION_FAILED - invalid type 'bool' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'".to_owned(),
        ),
    ];
    let c = b.connection().await;
    for (flags, arguments, text) in refused {
        let ch = b.channel(c).await;
        let result = b.queue_declare(ch, "q", flags, arguments.clone()).await;
        let reply = result.map(drop).map_err(|r| (r.code, norm(&r.text)));
        assert_eq!(reply, Err((406, text)), "declare with {arguments:?}");
        assert!(!b.channel_open(ch).await);
    }
    // RabbitMQ 3.10 fails internally on an unknown master locator: 541 closes the connection.
    let ch = b.channel(c).await;
    let bogus = classic(&[("x-queue-master-locator", s("bogus"))]);
    let reply = b.queue_declare(ch, "q", transient, bogus).await;
    assert_eq!(
        reply.map(drop).map_err(|r| (r.code, r.text)),
        Err((541, "INTERNAL_ERROR".to_owned()))
    );

    let c = b.connection().await;
    let accepted: Vec<(QFlags, FieldTable)> = vec![
        (transient, classic(&[("x-queue-mode", s("lazy"))])),
        (transient, classic(&[("x-queue-version", i(2))])),
        (
            transient,
            classic(&[("x-queue-master-locator", s("client-local"))]),
        ),
        (transient, classic(&[("x-foo", i(1))])),
        (transient, classic(&[("x-max-segment-size", i(1))])),
        (durable, quorum(&[("x-max-segment-size", i(1))])),
        (
            durable,
            quorum(&[("x-foo", i(1)), ("x-message-ttl", i(1_000))]),
        ),
        // Quorum queues take any x-delivery-limit; only a non-negative integer acts.
        (durable, quorum(&[("x-delivery-limit", s("abc"))])),
        (
            durable,
            quorum(&[("x-dead-letter-strategy", s("at-most-once"))]),
        ),
        (
            durable,
            quorum(&[("x-queue-leader-locator", s("balanced"))]),
        ),
        (durable, quorum(&[("x-max-in-memory-length", i(5))])),
        (
            transient,
            classic(&[
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("k")),
            ]),
        ),
    ];
    let ch = b.channel(c).await;
    for (flags, arguments) in accepted {
        let declared = b.queue_declare(ch, "ok", flags, arguments.clone()).await;
        assert!(declared.is_ok(), "declare with {arguments:?}: {declared:?}");
        b.queue_delete(ch, "ok", false, false).await.unwrap();
    }
}

/// Where a message goes back to in a quorum queue (RabbitMQ 3.10, probed): a nack or reject
/// with requeue, and `basic.recover`, append it to the back, unless the queue has an
/// `x-delivery-limit`; a closed channel's messages (and with the limit, every requeued one)
/// are served first, in the order they came back. A classic queue puts both back where they
/// were.
async fn quorum_queues_send_nacked_messages_back_and_serve_returns_first(b: &mut impl Amqp) {
    let durable = DURABLE;
    let c = b.connection().await;
    let ch = b.channel(c).await;
    for (queue, kind) in [("qq", "quorum"), ("cq", "classic")] {
        let args = table(&[("x-queue-type", s(kind))]);
        b.queue_declare(ch, queue, durable, args).await.unwrap();
    }
    let texts = |name: &str| (0..6).map(|n| format!("{name}{n}")).collect::<Vec<_>>();
    for queue in ["qq", "cq"] {
        for text in texts("m") {
            b.send(ch, "", queue, &text).await;
        }
    }
    let getter = b.channel(c).await;
    for queue in ["qq", "cq"] {
        let mut tags = Vec::new();
        for _ in 0..3 {
            let (msg, _) = b.get(getter, queue, false).await.unwrap().unwrap();
            tags.push(msg.tag);
        }
        // m2 back first, then m0; m1 stays unacked.
        b.nack(getter, tags[2], false, true).await.unwrap();
        b.nack(getter, tags[0], false, true).await.unwrap();
    }
    assert_eq!(b.drain(ch, "qq").await, ["m3", "m4", "m5", "m2", "m0"]);
    assert_eq!(b.drain(ch, "cq").await, ["m0", "m2", "m3", "m4", "m5"]);
    b.close_channel(getter).await;
    assert_eq!(b.drain(ch, "qq").await, ["m1"]);
    assert_eq!(b.drain(ch, "cq").await, ["m1"]);

    // Returns by closed channels: first, in the order they came back, redelivered and
    // counted.
    for queue in ["qq", "cq"] {
        for text in texts("k") {
            b.send(ch, "", queue, &text).await;
        }
        let first = b.channel(c).await;
        b.get(first, queue, false).await.unwrap().unwrap();
        let second = b.channel(c).await;
        for _ in 0..2 {
            b.get(second, queue, false).await.unwrap().unwrap();
        }
        b.close_channel(second).await;
        b.close_channel(first).await;
    }
    let (head, _) = b.get(ch, "qq", true).await.unwrap().unwrap();
    assert_eq!((head.text(), head.redelivered), ("k1".to_owned(), true));
    assert_eq!(head.header("x-delivery-count"), Some(&i(1)));
    assert_eq!(b.drain(ch, "qq").await, ["k2", "k0", "k3", "k4", "k5"]);
    assert_eq!(b.drain(ch, "cq").await, texts("k"));

    // basic.recover requeues like a nack: to the back of a quorum queue.
    for text in texts("r") {
        b.send(ch, "", "qq", &text).await;
    }
    let recovering = b.channel(c).await;
    for _ in 0..2 {
        b.get(recovering, "qq", false).await.unwrap().unwrap();
    }
    b.recover(recovering, true).await.unwrap();
    assert_eq!(
        b.drain(ch, "qq").await,
        ["r2", "r3", "r4", "r5", "r0", "r1"]
    );
    for queue in ["qq", "cq"] {
        b.queue_delete(ch, queue, false, false).await.unwrap();
    }

    // With an `x-delivery-limit`, a nack and a recover requeue like a close: first, in the
    // order they come back.
    let limited = table(&[("x-queue-type", s("quorum")), ("x-delivery-limit", i(5))]);
    b.queue_declare(ch, "limited", durable, limited)
        .await
        .unwrap();
    for text in texts("d") {
        b.send(ch, "", "limited", &text).await;
    }
    let getter = b.channel(c).await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        let (msg, _) = b.get(getter, "limited", false).await.unwrap().unwrap();
        tags.push(msg.tag);
    }
    b.nack(getter, tags[2], false, true).await.unwrap();
    b.nack(getter, tags[0], false, true).await.unwrap();
    b.recover(getter, true).await.unwrap();
    let (head, _) = b.get(ch, "limited", true).await.unwrap().unwrap();
    assert_eq!(
        (
            head.text(),
            head.redelivered,
            head.header("x-delivery-count")
        ),
        ("d2".to_owned(), true, Some(&i(1)))
    );
    assert_eq!(b.drain(ch, "limited").await, ["d0", "d1", "d3", "d4", "d5"]);
}

/// The arguments a redeclare compares (RabbitMQ 3.10, probed): quorum-only and classic-only
/// ones too, the first difference in RabbitMQ's order, and no queue type equal to `classic`.
async fn redeclaring_compares_the_arguments_rabbitmq_compares_in_its_order(b: &mut impl Amqp) {
    let durable = DURABLE;
    let transient = QFlags::default();
    let prefix = "PRECONDITION_FAILED - inequivalent arg";
    let c = b.connection().await;
    let cases: Vec<(&str, QFlags, FieldTable, FieldTable, String)> = vec![
        (
            "qq",
            durable,
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-max-in-memory-length", i(5)),
            ]),
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-max-in-memory-length", i(6)),
            ]),
            format!(
                "{prefix} 'x-max-in-memory-length' for queue 'qq' in vhost '/': received '6' but current is '5'"
            ),
        ),
        (
            "lazy",
            transient,
            table(&[("x-queue-mode", s("lazy"))]),
            FieldTable::new(),
            format!(
                "{prefix} 'x-queue-mode' for queue 'lazy' in vhost '/': received none but current is the value 'lazy' of type 'longstr'"
            ),
        ),
        (
            "located",
            transient,
            table(&[("x-queue-master-locator", s("random"))]),
            table(&[("x-queue-master-locator", s("min-masters"))]),
            format!(
                "{prefix} 'x-queue-master-locator' for queue 'located' in vhost '/': received 'min-masters' but current is 'random'"
            ),
        ),
        // Only the existing queue's type's arguments count, in that type's order.
        (
            "retyped",
            durable,
            table(&[("x-queue-type", s("quorum"))]),
            table(&[("x-max-priority", i(3))]),
            format!(
                "{prefix} 'x-queue-type' for queue 'retyped' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"
            ),
        ),
        (
            "quorum-order",
            durable,
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-message-ttl", i(5)),
                ("x-max-length", i(1)),
            ]),
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-message-ttl", i(6)),
                ("x-max-length", i(2)),
            ]),
            format!(
                "{prefix} 'x-max-length' for queue 'quorum-order' in vhost '/': received '2' but current is '1'"
            ),
        ),
        // A value of another type is printed as Erlang prints RabbitMQ's reading of it.
        (
            "limit-typed",
            durable,
            table(&[("x-queue-type", s("quorum")), ("x-delivery-limit", i(1))]),
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-delivery-limit", FieldValue::Table(table(&[("a", i(1))]))),
            ]),
            format!(
                "{prefix} 'x-delivery-limit' for queue 'limit-typed' in vhost '/': received '[{{<<\"a\">>,long,1}}]' but current is '1'"
            ),
        ),
        (
            "limit-void",
            durable,
            table(&[("x-queue-type", s("quorum")), ("x-delivery-limit", i(1))]),
            table(&[
                ("x-queue-type", s("quorum")),
                ("x-delivery-limit", FieldValue::Void),
            ]),
            format!(
                "{prefix} 'x-delivery-limit' for queue 'limit-void' in vhost '/': received none but current is '1'"
            ),
        ),
        (
            "versioned",
            transient,
            table(&[("x-queue-version", i(1))]),
            table(&[("x-queue-version", i(2))]),
            format!(
                "{prefix} 'x-queue-version' for queue 'versioned' in vhost '/': received '2' but current is '1'"
            ),
        ),
        (
            "two",
            transient,
            table(&[("x-max-length", i(1)), ("x-message-ttl", i(5))]),
            table(&[("x-max-length", i(2)), ("x-message-ttl", i(6))]),
            format!(
                "{prefix} 'x-message-ttl' for queue 'two' in vhost '/': received '6' but current is '5'"
            ),
        ),
    ];
    for (queue, flags, first, second, text) in cases {
        let ch = b.channel(c).await;
        b.queue_declare(ch, queue, flags, first).await.unwrap();
        let reply = b.queue_declare(ch, queue, flags, second).await;
        let reply = reply.map(drop).map_err(|r| (r.code, norm(&r.text)));
        assert_eq!(reply, Err((406, text)));
        let ch = b.channel(c).await;
        b.queue_delete(ch, queue, false, false).await.unwrap();
    }
    // An exclusive queue is never durable, so the flag makes no difference to a redeclare.
    let ch = b.channel(c).await;
    let exclusive = QFlags {
        exclusive: true,
        ..QFlags::default()
    };
    let exclusive_durable = QFlags {
        durable: true,
        ..exclusive
    };
    b.queue_declare(ch, "mine", exclusive_durable, FieldTable::new())
        .await
        .unwrap();
    b.queue_declare(ch, "mine", exclusive, FieldTable::new())
        .await
        .unwrap();
    b.queue_delete(ch, "mine", false, false).await.unwrap();
    // A quorum queue ignores a classic queue's argument on a redeclare.
    let ch = b.channel(c).await;
    quorum_queue(b, ch, "qq").await;
    let prioritised = table(&[("x-queue-type", s("quorum")), ("x-max-priority", i(3))]);
    b.queue_declare(ch, "qq", durable, prioritised)
        .await
        .unwrap();
    b.queue_delete(ch, "qq", false, false).await.unwrap();
    // No x-queue-type is a classic queue, either way round.
    let ch = b.channel(c).await;
    let classic = table(&[("x-queue-type", s("classic"))]);
    b.queue_declare(ch, "plain", transient, FieldTable::new())
        .await
        .unwrap();
    b.queue_declare(ch, "plain", transient, classic.clone())
        .await
        .unwrap();
    b.queue_declare(ch, "typed", transient, classic)
        .await
        .unwrap();
    b.queue_declare(ch, "typed", transient, FieldTable::new())
        .await
        .unwrap();
    for queue in ["plain", "typed"] {
        b.queue_delete(ch, queue, false, false).await.unwrap();
    }
}

/// Publishes `text` to `queue` through the default exchange: whether it was confirmed.
async fn confirmed(b: &mut impl Amqp, ch: harness::Ch, queue: &str, text: &str) -> bool {
    let published = b.publish(ch, "", queue, false, Properties::default(), text);
    published.await.unwrap().acked
}

/// RabbitMQ 3.10 (rabbit_fifo, probed on 3.10.8): a quorum `reject-publish` queue tells the
/// channels that have published to it to stop when it goes over its limit, and to go on at
/// 80 % of it; a channel's first publish asks, and is refused only while the queue is over.
async fn a_full_quorum_queue_stops_the_publishers_it_knows_and_asks_about_new_ones(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let first = b.channel(c).await;
    let limited = table(&[
        ("x-queue-type", s("quorum")),
        ("x-max-length", i(2)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(first, "full", DURABLE, limited)
        .await
        .unwrap();
    let mut acked = Vec::new();
    for n in 0..4 {
        acked.push(confirmed(b, first, "full", &format!("a{n}")).await);
    }
    assert_eq!(acked, [true, true, true, false]);
    // Back at the limit, not yet at 80 % of it: the first channel stays stopped; a channel
    // that never published here gets in, and takes the queue over again, which stops both.
    let other = b.connection().await;
    let second = b.channel(other).await;
    b.get(second, "full", true).await.unwrap().unwrap();
    let acked = [
        confirmed(b, first, "full", "a4").await,
        confirmed(b, second, "full", "b0").await,
        confirmed(b, second, "full", "b1").await,
        confirmed(b, first, "full", "a5").await,
    ];
    assert_eq!(acked, [false, true, false, false]);
    assert_eq!(b.depth("full").await, Some(3));
    // A dead-lettered message never asks: it gets in over the limit.
    let to_full = table(&[
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("full")),
    ]);
    b.queue_declare(first, "source", QFlags::default(), to_full)
        .await
        .unwrap();
    b.send(first, "", "source", "dead").await;
    let (message, _) = b.get(first, "source", false).await.unwrap().unwrap();
    b.reject(first, message.tag, false).await.unwrap();
    assert_eq!(b.depth_becomes("full", Some(4)).await, Some(4));
    // A closed channel is forgotten: the next one on its connection asks again.
    b.close_channel(second).await;
    for _ in 0..2 {
        b.get(first, "full", true).await.unwrap().unwrap();
    }
    let third = b.channel(other).await;
    let acked = [
        confirmed(b, first, "full", "a6").await,
        confirmed(b, third, "full", "c0").await,
    ];
    assert_eq!(acked, [false, true]);
    assert_eq!(b.depth("full").await, Some(3));
}

/// Length limits on quorum queues (RabbitMQ 3.10, probed): `reject-publish` refuses only
/// while the queue is already over its limit, so one message more gets in (ready messages
/// count, unacked ones do not); `reject-publish-dlx` behaves as `drop-head`.
async fn quorum_queue_length_limits_are_soft_and_reject_publish_dlx_drops_the_head(
    b: &mut impl Amqp,
) {
    let durable = DURABLE;
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.exchange(ch, "dlx", "fanout").await;
    b.queue(ch, "dead").await;
    b.bind(ch, "dead", "dlx", "").await;
    let quorum = |pairs: &[(&str, FieldValue)]| {
        let mut args = table(pairs);
        args.insert("x-queue-type".into(), s("quorum"));
        args.insert("x-dead-letter-exchange".into(), s("dlx"));
        args
    };
    let soft = quorum(&[("x-max-length", i(2)), ("x-overflow", s("reject-publish"))]);
    b.queue_declare(ch, "soft", durable, soft).await.unwrap();
    let mut acked = Vec::new();
    for n in 0..2 {
        acked.push(confirmed(b, ch, "soft", &format!("s{n}")).await);
    }
    // An unacked message does not count against the limit.
    let getter = b.channel(c).await;
    b.get(getter, "soft", false).await.unwrap().unwrap();
    for n in 2..5 {
        acked.push(confirmed(b, ch, "soft", &format!("s{n}")).await);
    }
    assert_eq!(acked, [true, true, true, true, false]);
    assert_eq!(b.depth("soft").await, Some(3));
    // Once over, it refuses until its ready messages are back at 80 % of the limit (1 of 2).
    let mut acked = Vec::new();
    for n in 5..7 {
        b.get(getter, "soft", true).await.unwrap().unwrap();
        acked.push(confirmed(b, ch, "soft", &format!("s{n}")).await);
    }
    assert_eq!(acked, [false, true]);
    assert_eq!(b.depth("soft").await, Some(2));
    let bytes = quorum(&[
        ("x-max-length-bytes", i(10)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(ch, "bytes", durable, bytes).await.unwrap();
    let mut acked = Vec::new();
    for n in 0..4 {
        let p = b
            .publish(
                ch,
                "",
                "bytes",
                false,
                Properties::default(),
                &format!("b{n}xx"),
            )
            .await
            .unwrap();
        acked.push(p.acked);
    }
    assert_eq!(acked, [true, true, true, false]);

    let dlx = quorum(&[
        ("x-max-length", i(2)),
        ("x-overflow", s("reject-publish-dlx")),
    ]);
    b.queue_declare(ch, "dlx-head", durable, dlx).await.unwrap();
    let mut acked = Vec::new();
    for n in 0..4 {
        let p = b
            .publish(
                ch,
                "",
                "dlx-head",
                false,
                Properties::default(),
                &format!("d{n}"),
            )
            .await
            .unwrap();
        acked.push(p.acked);
    }
    assert_eq!(acked, [true; 4]);
    assert_eq!(b.drain(ch, "dlx-head").await, ["d2", "d3"]);
    let mut dead = Vec::new();
    while let Some((msg, _)) = b.get(ch, "dead", true).await.unwrap() {
        let reason = deaths(&msg)[0].get("reason").cloned();
        dead.push((msg.text(), reason));
    }
    let maxlen = Some(s("maxlen"));
    assert_eq!(
        dead,
        [("d0".to_owned(), maxlen.clone()), ("d1".to_owned(), maxlen)]
    );
    b.close_channel(getter).await;
    for queue in ["soft", "bytes", "dlx-head"] {
        b.queue_delete(ch, queue, false, false).await.unwrap();
    }
}

/// Exchange and consumer details, each probed on RabbitMQ 3.10: system exchanges cannot be
/// deleted, argument types are checked with RabbitMQ's texts, and an auto-delete exchange
/// goes when it loses its last binding as a source (an unbind or its queue's deletion), not
/// before it ever had one.
async fn system_exchanges_argument_types_and_auto_delete_exchanges(b: &mut impl Amqp) {
    let c = b.connection().await;
    let reply = |result: harness::R<()>| result.map_err(|r| (r.code, norm(&r.text)));
    let ch = b.channel(c).await;
    assert_eq!(
        reply(b.exchange_delete(ch, "amq.direct", false).await),
        Err((
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
                .to_owned()
        ))
    );
    let ch = b.channel(c).await;
    let bad_ae = table(&[("alternate-exchange", FieldValue::Bool(true))]);
    let declared = b
        .exchange_declare(ch, "x", "direct", XFlags::default(), bad_ae)
        .await;
    assert_eq!(
        reply(declared),
        Err((
            406,
            "PRECONDITION_FAILED - invalid type 'bool' for arg 'alternate-exchange' in exchange 'x' in vhost '/'"
                .to_owned()
        ))
    );
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let failover = table(&[("x-cancel-on-ha-failover", s("yes"))]);
    let consumed = b.consume_with(ch, "q", "c", false, false, failover).await;
    assert_eq!(
        consumed.map(drop).map_err(|r| (r.code, norm(&r.text))),
        Err((
            406,
            "PRECONDITION_FAILED - invalid arg 'x-cancel-on-ha-failover' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
                .to_owned()
        ))
    );
    let ch = b.channel(c).await;
    let unknown = table(&[("x-foo", s("yes"))]);
    b.consume_with(ch, "q", "c", false, false, unknown)
        .await
        .unwrap();

    let auto_delete = XFlags {
        auto_delete: true,
        ..XFlags::default()
    };
    let ch = b.channel(c).await;
    // Never bound: kept.
    b.exchange_declare(ch, "unbound", "direct", auto_delete, FieldTable::new())
        .await
        .unwrap();
    let passive = XFlags {
        passive: true,
        ..XFlags::default()
    };
    b.exchange_declare(ch, "unbound", "direct", passive, FieldTable::new())
        .await
        .unwrap();
    // Its last binding's queue deleted: gone.
    b.exchange_declare(ch, "fan", "fanout", auto_delete, FieldTable::new())
        .await
        .unwrap();
    b.queue(ch, "short-lived").await;
    b.bind(ch, "short-lived", "fan", "").await;
    b.queue_delete(ch, "short-lived", false, false)
        .await
        .unwrap();
    let gone = b
        .exchange_declare(ch, "fan", "fanout", passive, FieldTable::new())
        .await;
    assert_eq!(
        reply(gone),
        Err((404, "NOT_FOUND - no exchange 'fan' in vhost '/'".to_owned()))
    );
    let ch = b.channel(c).await;
    b.exchange_delete(ch, "unbound", false).await.unwrap();
}

/// A consume argument only another queue type takes is refused (RabbitMQ 3.10's queue types
/// each list theirs; probed on 3.10.8): a stream's `x-stream-offset` on classic and quorum
/// queues, a classic queue's `x-cancel-on-ha-failover` on a quorum queue, whatever its value,
/// the first such on the wire named (lapin writes a table's keys sorted). The types of the
/// arguments the queue's type takes are checked first, a global prefetch (which a quorum queue
/// refuses) after; unknown arguments are ignored.
async fn consume_arguments_of_another_queue_type_are_refused(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "classic").await;
    b.queue_declare(
        ch,
        "quorum",
        DURABLE,
        table(&[("x-queue-type", s("quorum"))]),
    )
    .await
    .unwrap();
    let refused = |arg: &str, queue: &str, module: &str| {
        Err((
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost '/' of queue type {module}"
            ),
        ))
    };
    let wrong_type = |arg: &str, queue: &str, why: &str| {
        Err((
            406,
            format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost '/': {why}"
            ),
        ))
    };
    let priority_not_integer = "\"expected integer, got longstr\"";
    let cases = [
        (
            "classic",
            vec![("x-stream-offset", s("first"))],
            refused("x-stream-offset", "classic", "rabbit_classic_queue"),
        ),
        (
            "quorum",
            vec![("x-stream-offset", i(5))],
            refused("x-stream-offset", "quorum", "rabbit_quorum_queue"),
        ),
        (
            "quorum",
            vec![("x-cancel-on-ha-failover", FieldValue::Bool(true))],
            refused("x-cancel-on-ha-failover", "quorum", "rabbit_quorum_queue"),
        ),
        // Not type-checked on a quorum queue: it does not take it.
        (
            "quorum",
            vec![("x-cancel-on-ha-failover", s("yes"))],
            refused("x-cancel-on-ha-failover", "quorum", "rabbit_quorum_queue"),
        ),
        // The first on the wire (in process, the table's order; lapin sorts the keys).
        (
            "quorum",
            vec![
                ("x-cancel-on-ha-failover", FieldValue::Bool(true)),
                ("x-stream-offset", i(1)),
            ],
            refused("x-cancel-on-ha-failover", "quorum", "rabbit_quorum_queue"),
        ),
        // Types first: `x-priority`, then (a classic queue's) `x-cancel-on-ha-failover`.
        (
            "quorum",
            vec![("x-stream-offset", i(1)), ("x-priority", s("a"))],
            wrong_type("x-priority", "quorum", priority_not_integer),
        ),
        (
            "classic",
            vec![("x-cancel-on-ha-failover", s("a")), ("x-priority", s("a"))],
            wrong_type("x-priority", "classic", priority_not_integer),
        ),
        (
            "classic",
            vec![
                ("x-stream-offset", i(1)),
                ("x-cancel-on-ha-failover", s("a")),
            ],
            wrong_type(
                "x-cancel-on-ha-failover",
                "classic",
                "{unacceptable_type,longstr}",
            ),
        ),
        (
            "classic",
            vec![
                ("x-cancel-on-ha-failover", FieldValue::Bool(false)),
                ("x-stream-offset", s("a")),
            ],
            refused("x-stream-offset", "classic", "rabbit_classic_queue"),
        ),
        (
            "classic",
            vec![
                ("x-cancel-on-ha-failover", FieldValue::Bool(true)),
                ("x-stream-filter", s("a")),
                ("x-priority", i(2)),
            ],
            Ok(()),
        ),
        (
            "quorum",
            vec![("x-stream-filter", s("a")), ("x-priority", i(-1))],
            Ok(()),
        ),
    ];
    for (queue, args, expected) in cases {
        let ch = b.channel(c).await;
        let consumed = b
            .consume_with(ch, queue, "c", false, false, table(&args))
            .await;
        let consumed = consumed.map(drop).map_err(|r| (r.code, norm(&r.text)));
        assert_eq!(consumed, expected, "{queue} {args:?}");
        if consumed.is_ok() {
            b.close_channel(ch).await;
        }
    }
    let ch = b.channel(c).await;
    b.qos(ch, 1, true).await.unwrap();
    let consumed = b
        .consume_with(
            ch,
            "quorum",
            "c",
            false,
            false,
            table(&[("x-stream-offset", i(1))]),
        )
        .await;
    assert_eq!(
        consumed.map(drop).map_err(|r| (r.code, norm(&r.text))),
        refused("x-stream-offset", "quorum", "rabbit_quorum_queue")
    );
    // Every accepted consumer went with its channel: nothing refused was added. (A quorum
    // queue forgets a closed channel's consumer in the background on RabbitMQ.)
    let ch = b.channel(c).await;
    let passive = QFlags {
        passive: true,
        ..QFlags::default()
    };
    for queue in ["classic", "quorum"] {
        let mut consumers = u32::MAX;
        for _ in 0..100 {
            (_, _, consumers) = b
                .queue_declare(ch, queue, passive, FieldTable::new())
                .await
                .unwrap();
            if consumers == 0 {
                break;
            }
            b.sleep_ms(20).await;
        }
        assert_eq!(consumers, 0, "{queue}");
    }
    b.queue_delete(ch, "quorum", false, false).await.unwrap();
}

/// `expiration` as RabbitMQ 3.10 reads it (probed): a sign and leading zeros are fine, nothing
/// may follow the digits, at most ten years; each refusal is 406 with its exact text, Erlang's
/// line break in a long number included.
/// RabbitMQ refuses a delivery mode other than 1 (transient), 2 (persistent) or none, after
/// the `CC` and `BCC` headers (probed on 3.10.8).
async fn a_delivery_mode_other_than_1_or_2_is_406(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let with_mode = |mode| Properties {
        delivery_mode: mode,
        ..Properties::default()
    };
    for accepted in [None, Some(1), Some(2)] {
        let p = b
            .publish(ch, "", "q", false, with_mode(accepted), "m")
            .await;
        assert!(p.is_ok_and(|p| p.acked), "delivery mode {accepted:?}");
    }
    assert_eq!(b.depth("q").await, Some(3));
    for refused in [0, 3, 255] {
        let ch = b.channel(c).await;
        let p = b
            .publish(ch, "", "q", false, with_mode(Some(refused)), "m")
            .await;
        assert_eq!(
            p.map(drop).map_err(|r| (r.code, r.text)),
            Err((
                406,
                format!(
                    "PRECONDITION_FAILED - invalid message: {{delivery_mode_unknown,{refused}}}"
                )
            )),
        );
    }
    // A CC header of the wrong type is named first.
    let ch = b.channel(c).await;
    let both = Properties {
        headers: Some(table(&[("CC", i(7))])),
        ..with_mode(Some(3))
    };
    let p = b.publish(ch, "", "q", false, both, "m").await;
    assert_eq!(
        p.map(drop).map_err(|r| (r.code, r.text)),
        Err((
            406,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",long}"
                .to_owned()
        )),
    );
    assert_eq!(b.depth("q").await, Some(3));
}

async fn expiration_is_read_as_rabbitmq_reads_it(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "q").await;
    let expiring = |ms: &str| Properties {
        expiration: Some(ms.to_owned()),
        ..Properties::default()
    };
    for accepted in ["+5000", "-0", "007000", "315360000000"] {
        let p = b.publish(ch, "", "q", false, expiring(accepted), "m").await;
        assert!(p.is_ok_and(|p| p.acked), "expiration {accepted:?}");
    }
    assert_eq!(b.depth("q").await, Some(4));
    let long = "9".repeat(20);
    let trailing = format!("1{}", "x".repeat(30));
    let refused = [
        (
            trailing.as_str(),
            format!(
                "{{leftover_string,\n{}\"{}\"}}",
                " ".repeat(55),
                "x".repeat(30)
            ),
        ),
        ("1\u{1}", "{leftover_string,[1]}".to_owned()),
        ("1\n", "{leftover_string,\"\\n\"}".to_owned()),
        ("abc", "no_integer".to_owned()),
        ("", "no_integer".to_owned()),
        (" 5", "no_integer".to_owned()),
        ("1.5", "{leftover_string,\".5\"}".to_owned()),
        ("5\"x", "{leftover_string,\"\\\"x\"}".to_owned()),
        ("-007", "{value_negative,-7}".to_owned()),
        ("315360000001", "{value_too_large,315360000001}".to_owned()),
        (
            long.as_str(),
            format!("{{value_too_large,\n{}{long}}}", " ".repeat(44)),
        ),
    ];
    for (expiration, reason) in refused {
        let ch = b.channel(c).await;
        let p = b
            .publish(ch, "", "q", false, expiring(expiration), "m")
            .await;
        assert_eq!(
            p.map(drop).map_err(|r| (r.code, r.text)),
            Err((
                406,
                format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")
            )),
        );
    }
    // Past 255 bytes RabbitMQ cuts the reply text to 252 and adds "...".
    let ch = b.channel(c).await;
    let longer = format!("1{}", "x".repeat(60));
    let p = b.publish(ch, "", "q", false, expiring(&longer), "m").await;
    let full = format!(
        "PRECONDITION_FAILED - invalid expiration '{longer}': {{leftover_string,\n{}\"{}\"}}",
        " ".repeat(85),
        "x".repeat(60)
    );
    let cut = format!("{}...", &full[..252]);
    assert_eq!(p.map(drop).map_err(|r| (r.code, r.text)), Err((406, cut)));
    let ch = b.channel(c).await;
    b.queue_delete(ch, "q", false, false).await.unwrap();
}

/// What another connection may do with an exclusive queue (RabbitMQ 3.10, probed): publish
/// to it (directly or through a binding), and unbind what is not bound; everything else is
/// 405 with RabbitMQ's whole text.
async fn another_connection_may_publish_to_an_exclusive_queue_but_not_touch_it(b: &mut impl Amqp) {
    let owner = b.connection().await;
    let och = b.channel(owner).await;
    let exclusive = QFlags {
        exclusive: true,
        ..QFlags::default()
    };
    b.queue_declare(och, "mine", exclusive, FieldTable::new())
        .await
        .unwrap();
    b.exchange(och, "fan", "fanout").await;
    b.exchange(och, "spare", "fanout").await;
    b.bind(och, "mine", "fan", "").await;
    let other = b.connection().await;
    // RabbitMQ's text goes on ("It could be originally declared on another connection ..."),
    // but a long vhost name pushes that past the 255 bytes it keeps: compare up to the vhost.
    let locked = (
        405,
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
            .to_owned(),
    );
    let refused = |result: harness::R<()>| {
        result.map_err(|r| {
            let text = norm(&r.text);
            let cut = text.find("'/'").map_or(text.len(), |at| at + 3);
            (r.code, text[..cut].to_owned())
        })
    };
    let ch = b.channel(other).await;
    let got = b.get(ch, "mine", false).await.map(drop);
    assert_eq!(refused(got), Err(locked.clone()), "basic.get");
    let ch = b.channel(other).await;
    let bound = b
        .queue_bind(ch, "mine", "spare", "", FieldTable::new())
        .await;
    assert_eq!(refused(bound), Err(locked.clone()), "queue.bind");
    let ch = b.channel(other).await;
    let unbound = b
        .queue_unbind(ch, "mine", "fan", "", FieldTable::new())
        .await;
    assert_eq!(
        refused(unbound),
        Err(locked.clone()),
        "queue.unbind of a binding"
    );
    let ch = b.channel(other).await;
    let purged = b.queue_purge(ch, "mine").await.map(drop);
    assert_eq!(refused(purged), Err(locked.clone()), "queue.purge");
    let ch = b.channel(other).await;
    let deleted = b.queue_delete(ch, "mine", false, false).await.map(drop);
    assert_eq!(refused(deleted), Err(locked.clone()), "queue.delete");
    let ch = b.channel(other).await;
    let passive = QFlags {
        passive: true,
        ..QFlags::default()
    };
    let declared = b
        .queue_declare(ch, "mine", passive, FieldTable::new())
        .await;
    assert_eq!(
        refused(declared.map(drop)),
        Err(locked.clone()),
        "passive declare"
    );
    let ch = b.channel(other).await;
    let declared = b
        .queue_declare(ch, "mine", QFlags::default(), FieldTable::new())
        .await;
    assert_eq!(refused(declared.map(drop)), Err(locked), "declare");
    // Allowed: unbinding what is not bound, and publishing, directly or through a binding.
    let ch = b.channel(other).await;
    b.queue_unbind(ch, "mine", "spare", "", FieldTable::new())
        .await
        .unwrap();
    b.send(ch, "", "mine", "direct").await;
    b.send(ch, "fan", "", "fanned").await;
    assert_eq!(b.drain(och, "mine").await, ["direct", "fanned"]);
    b.close_connection(owner).await;
    let ch = b.channel(other).await;
    for exchange in ["fan", "spare"] {
        b.exchange_delete(ch, exchange, false).await.unwrap();
    }
}

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn asking(reply_to: &str, correlation: &str) -> Properties {
    Properties {
        reply_to: Some(reply_to.into()),
        correlation_id: Some(correlation.into()),
        ..Properties::default()
    }
}

/// RabbitMQ's direct reply-to, as RPC clients (NestJS's, for one) use it: a no-ack consumer on
/// the pseudo-queue, requests whose `reply_to` the broker rewrites to a name of that channel's
/// own, and replies published to that name on the default exchange, which reach the consumer
/// without any queue (so a mandatory reply is also returned, unroutable). Probed on 3.10.8.
async fn direct_reply_to_carries_replies_to_the_requesting_channel(b: &mut impl Amqp) {
    let c = b.connection().await;
    let client = b.channel(c).await;
    let server_connection = b.connection().await;
    let server = b.channel(server_connection).await;
    b.queue(server, "rpc").await;
    let replies = b
        .consume(client, REPLY_TO, "replies", true, false)
        .await
        .unwrap();
    let request = b
        .publish(client, "", "rpc", false, asking(REPLY_TO, "1"), "ask")
        .await
        .unwrap();
    assert!(request.acked);
    let (msg, _) = b
        .get(server, "rpc", true)
        .await
        .unwrap()
        .expect("the request");
    let reply_name = msg.properties.reply_to.clone().expect("a reply-to");
    assert!(
        reply_name.starts_with("amq.rabbitmq.reply-to.") && reply_name.len() > REPLY_TO.len() + 1,
        "{reply_name}"
    );
    assert_eq!(msg.properties.correlation_id.as_deref(), Some("1"));
    // The pseudo-queue and the reply name answer a declare as a queue with one consumer.
    let declared = b
        .queue_declare(server, REPLY_TO, QFlags::default(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(declared, (REPLY_TO.to_owned(), 0, 1));
    let passive = QFlags {
        passive: true,
        ..QFlags::default()
    };
    let declared = b
        .queue_declare(server, &reply_name, passive, FieldTable::new())
        .await
        .unwrap();
    assert_eq!(declared, (reply_name.clone(), 0, 1));

    let reply = Properties {
        correlation_id: Some("1".into()),
        ..Properties::default()
    };
    let published = b
        .publish(server, "", &reply_name, false, reply.clone(), "answer")
        .await
        .unwrap();
    assert_eq!(
        published,
        harness::Pub {
            returned: None,
            acked: true
        }
    );
    let answer = b.next(replies).await.msg();
    assert_eq!(answer.text(), "answer");
    assert_eq!(answer.properties.correlation_id.as_deref(), Some("1"));
    assert_eq!(
        (answer.exchange.as_str(), answer.routing_key.as_str()),
        ("", reply_name.as_str())
    );
    // The channel's next delivery tag, not taken: the channel has delivered nothing else.
    assert_eq!((answer.tag, answer.redelivered), (1, false));
    let answer = b.next(replies).await;
    assert!(matches!(answer, Next::Empty), "one reply, once: {answer:?}");
    // Mandatory: no queue took it, so it comes back; and the consumer has it all the same.
    let published = b
        .publish(server, "", &reply_name, true, reply.clone(), "again")
        .await
        .unwrap();
    assert_eq!(published.returned.map(|(code, _)| code), Some(312));
    assert_eq!(b.next(replies).await.msg().text(), "again");
    // A `CC` header reaches it too, with the message's own routing key.
    let cc = Properties {
        headers: Some(table(&[("CC", FieldValue::Array(vec![s(&reply_name)]))])),
        ..Properties::default()
    };
    b.publish(server, "", "nowhere", false, cc, "copied")
        .await
        .unwrap();
    let copied = b.next(replies).await.msg();
    assert_eq!(
        (copied.text(), copied.routing_key),
        ("copied".to_owned(), "nowhere".to_owned())
    );
    // Named twice, by the key and in `CC`: delivered once.
    let twice = Properties {
        headers: Some(table(&[("CC", FieldValue::Array(vec![s(&reply_name)]))])),
        ..Properties::default()
    };
    b.publish(server, "", &reply_name, false, twice, "once")
        .await
        .unwrap();
    assert_eq!(b.next(replies).await.msg().text(), "once");
    // A name no channel has: dropped, confirmed all the same. Through another exchange the
    // name means nothing.
    let unknown = format!("{REPLY_TO}.unknown");
    let published = b
        .publish(server, "", &unknown, false, reply.clone(), "lost")
        .await
        .unwrap();
    assert_eq!(
        published,
        harness::Pub {
            returned: None,
            acked: true
        }
    );
    let published = b
        .publish(server, "amq.direct", &reply_name, true, reply, "routed")
        .await
        .unwrap();
    assert_eq!(published.returned.map(|(code, _)| code), Some(312));
    assert!(matches!(b.quiet(replies).await, Next::Empty));
    let error = b
        .queue_declare(server, &unknown, passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
    // When the requesting channel closes, its name is gone.
    b.close_channel(client).await;
    let server = b.channel(server_connection).await;
    let error = b
        .queue_declare(server, &reply_name, passive, FieldTable::new())
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
}

async fn direct_reply_to_refuses_what_rabbitmq_refuses(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    b.queue(ch, "rpc").await;
    // Replies are never acked.
    let error = b
        .consume(ch, REPLY_TO, "acking", false, false)
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        )
    );
    // A request that asks for a reply needs the channel's reply consumer.
    let ch = b.channel(c).await;
    let error = b
        .publish(ch, "", "rpc", false, asking(REPLY_TO, "1"), "ask")
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        )
    );
    assert_eq!(
        b.depth("rpc").await,
        Some(0),
        "the request was not enqueued"
    );
    // One per channel.
    let ch = b.channel(c).await;
    let replies = b.consume(ch, REPLY_TO, "one", true, false).await.unwrap();
    let error = b
        .consume(ch, REPLY_TO, "two", true, false)
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.text.as_str()),
        (406, "PRECONDITION_FAILED - reply consumer already set")
    );
    // After a cancel the channel has none again.
    let ch = b.channel(c).await;
    let replies_before = b.consume(ch, REPLY_TO, "once", true, false).await.unwrap();
    b.publish(ch, "", "rpc", false, asking(REPLY_TO, "2"), "ask")
        .await
        .unwrap();
    b.cancel(ch, replies_before).await.unwrap();
    let error = b
        .publish(ch, "", "rpc", false, asking(REPLY_TO, "3"), "ask")
        .await
        .unwrap_err();
    assert_eq!(error.code, 406);
    let _ = replies;
}

/// `basic.get-ok`'s count of messages left, when the next message has expired: a classic
/// queue, and a quorum queue's auto-ack get, drop it first and count 0; a quorum queue's
/// manual-ack get counts it (RabbitMQ 3.10's rabbit_fifo answers the dequeue before it looks
/// at the new head), though it is gone for whoever looks next (probed on 3.10.8).
async fn a_quorum_get_with_manual_ack_counts_the_expired_message_behind_it(b: &mut impl Amqp) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let expiring = Properties {
        expiration: Some("0".to_owned()),
        ..Properties::default()
    };
    b.queue(ch, "classic").await;
    quorum_queue(b, ch, "quorum").await;
    let mut lefts = Vec::new();
    for (queue, no_ack) in [("classic", false), ("quorum", true), ("quorum", false)] {
        b.send(ch, "", queue, "kept").await;
        b.publish(ch, "", queue, false, expiring.clone(), "expired")
            .await
            .unwrap();
        b.sleep_ms(100).await;
        let (msg, left) = b.get(ch, queue, no_ack).await.unwrap().unwrap();
        assert_eq!(msg.text(), "kept");
        if !no_ack {
            b.ack(ch, msg.tag, false).await.unwrap();
        }
        b.sleep_ms(100).await;
        lefts.push((left, b.depth(queue).await));
    }
    assert_eq!(lefts, [(0, Some(0)), (0, Some(0)), (1, Some(0))]);
}

/// `x-dead-letter-strategy: at-least-once` (RabbitMQ 3.10, probed on 3.10.8): a quorum
/// `reject-publish` queue keeps a message its dead-letter exchange cannot route (here: an
/// exchange that does not exist) instead of dropping it, and counts it toward its length
/// limit, though not among its ready messages. Without `reject-publish`, and with
/// `at-most-once`, such a message is dropped. A routable one goes at once either way, unless
/// a quorum `reject-publish` queue it routes to refuses it. (The worker routes kept messages
/// again after 180 s: `tests/faults.rs`, on the engine's clock.)
async fn a_quorum_queue_keeps_what_it_dead_letters_at_least_once_toward_its_limit(
    b: &mut impl Amqp,
) {
    let c = b.connection().await;
    let ch = b.channel(c).await;
    let quorum = |dlx: &str, strategy: &str, overflow: &str| {
        table(&[
            ("x-queue-type", s("quorum")),
            ("x-dead-letter-exchange", s(dlx)),
            ("x-dead-letter-strategy", s(strategy)),
            ("x-overflow", s(overflow)),
            ("x-max-length", i(2)),
        ])
    };
    let kinds = [
        ("kept", quorum("missing", "at-least-once", "reject-publish")),
        (
            "at-most-once",
            quorum("missing", "at-most-once", "reject-publish"),
        ),
        ("drop-head", quorum("missing", "at-least-once", "drop-head")),
    ];
    let mut acked = Vec::new();
    for (queue, arguments) in kinds {
        b.queue_declare(ch, queue, DURABLE, arguments)
            .await
            .unwrap();
        for n in 0..2 {
            assert!(confirmed(b, ch, queue, &format!("{queue}-{n}")).await);
            let (got, _) = b.get(ch, queue, false).await.unwrap().unwrap();
            b.reject(ch, got.tag, false).await.unwrap();
        }
        let mut publishes = Vec::new();
        for n in 2..5 {
            publishes.push(confirmed(b, ch, queue, &format!("{queue}-{n}")).await);
        }
        acked.push((queue, publishes, b.depth(queue).await));
    }
    assert_eq!(
        acked,
        [
            // Two kept and one ready make three, over the limit of two.
            ("kept", vec![true, false, false], Some(1)),
            ("at-most-once", vec![true, true, true], Some(3)),
            ("drop-head", vec![true, true, true], Some(2)),
        ]
    );
    b.exchange(ch, "dlx", "fanout").await;
    b.queue(ch, "dead").await;
    b.bind(ch, "dead", "dlx", "").await;
    let routed = quorum("dlx", "at-least-once", "reject-publish");
    b.queue_declare(ch, "routed", DURABLE, routed)
        .await
        .unwrap();
    for n in 0..3 {
        assert!(confirmed(b, ch, "routed", &format!("routed-{n}")).await);
        let (got, _) = b.get(ch, "routed", false).await.unwrap().unwrap();
        b.reject(ch, got.tag, false).await.unwrap();
    }
    assert_eq!(b.depth_becomes("dead", Some(3)).await, Some(3));
    assert!(confirmed(b, ch, "routed", "room").await);
    // The worker publishes with confirms, so a quorum `reject-publish` target treats it as
    // any publisher (probed on 3.10.8): its first message asks, and gets in while the target
    // is not over its limit; then the target is over it and has told the worker to stop, so
    // the next stays kept in the source, where it counts toward the limit. (A message
    // dead-lettered at most once never asks.)
    let target = table(&[
        ("x-queue-type", s("quorum")),
        ("x-max-length", i(1)),
        ("x-overflow", s("reject-publish")),
    ]);
    b.queue_declare(ch, "target", DURABLE, target)
        .await
        .unwrap();
    b.exchange(ch, "to-target", "fanout").await;
    b.bind(ch, "target", "to-target", "").await;
    assert!(confirmed(b, ch, "target", "at-the-limit").await);
    let source = quorum("to-target", "at-least-once", "reject-publish");
    b.queue_declare(ch, "source", DURABLE, source)
        .await
        .unwrap();
    for n in 0..2 {
        assert!(confirmed(b, ch, "source", &format!("dead-lettered-{n}")).await);
        let (got, _) = b.get(ch, "source", false).await.unwrap().unwrap();
        b.reject(ch, got.tag, false).await.unwrap();
        b.sleep_ms(200).await;
    }
    assert_eq!(b.depth("target").await, Some(2));
    // One kept, none ready: two publishes take the source over its limit of two.
    let mut publishes = Vec::new();
    for n in 0..3 {
        publishes.push(confirmed(b, ch, "source", &format!("after-{n}")).await);
    }
    assert_eq!(publishes, [true, true, false]);
    assert_eq!(b.depth("source").await, Some(2));
    // A full classic `reject-publish-dlx` queue refuses it too, and dead-letters a copy of
    // its own (probed on 3.10.8: the copy's `x-death` reads maxlen there, rejected before).
    let classic = table(&[
        ("x-max-length", i(1)),
        ("x-overflow", s("reject-publish-dlx")),
        ("x-dead-letter-exchange", s("from-classic")),
    ]);
    b.queue_declare(ch, "classic", DURABLE, classic)
        .await
        .unwrap();
    b.queue(ch, "overflowed").await;
    for (exchange, queue) in [("to-classic", "classic"), ("from-classic", "overflowed")] {
        b.exchange(ch, exchange, "fanout").await;
        b.bind(ch, queue, exchange, "").await;
    }
    assert!(confirmed(b, ch, "classic", "full").await);
    let source = quorum("to-classic", "at-least-once", "reject-publish");
    b.queue_declare(ch, "source-2", DURABLE, source)
        .await
        .unwrap();
    assert!(confirmed(b, ch, "source-2", "refused").await);
    let (got, _) = b.get(ch, "source-2", false).await.unwrap().unwrap();
    b.reject(ch, got.tag, false).await.unwrap();
    assert_eq!(b.depth_becomes("overflowed", Some(1)).await, Some(1));
    assert_eq!(b.depth("classic").await, Some(1));
    let mut publishes = Vec::new();
    for n in 0..3 {
        publishes.push(confirmed(b, ch, "source-2", &format!("after-{n}")).await);
    }
    assert_eq!(publishes, [true, true, false]);
}
