from agentmem import Client

STORES = ("sqlite", "postgres")


async def test_register_then_read_your_write(client: Client) -> None:
    org = await client.create_org("Acme")
    user = await client.register_user(org.fields["org_id"], "Ann", "ann@example.com", "s3cret-pass")
    got = await client.get_user(user.fields["user_id"], after_seq=client.last_seq)
    assert got.email == "ann@example.com"
    assert got.version == user.version
