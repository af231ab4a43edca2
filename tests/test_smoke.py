def test_two_users_exchange_a_message_with_all_three_ticks(server):
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    sent = alice.send("bob", "hello bob", id="m1")
    assert sent["type"] == "sent" and sent["id"] == "m1"
    msg = bob.recv(5)
    assert (msg["type"], msg["from"], msg["body"], msg["id"]) == ("msg", "alice", "hello bob", "m1")
    delivered = alice.recv(5)
    assert (delivered["type"], delivered["status"], delivered["ids"]) == ("receipt", "delivered", ["m1"])
    bob.read("alice", ["m1"])
    read = alice.recv(5)
    assert (read["status"], read["ids"], read["from"]) == ("read", ["m1"], "bob")
