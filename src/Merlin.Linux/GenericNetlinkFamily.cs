namespace Merlin.Linux;

/// <summary>A generic-netlink family as the controller describes it; <see cref="Id"/> is the nlmsg_type of its messages.</summary>
public sealed record GenericNetlinkFamily(string Name, ushort Id, uint Version, uint HeaderSize, uint MaxAttribute)
{
    /// <summary>
    /// Asks the controller (CTRL_CMD_GETFAMILY) for the family called <paramref name="name"/>. A kernel without
    /// it answers ENOENT, raised as <see cref="NetlinkException"/> with <see cref="Errno.ENOENT"/>.
    /// </summary>
    public static GenericNetlinkFamily Resolve(NetlinkClient client, string name)
    {
        using var request = new NetlinkBuffer(64);
        WriteGetFamily(request, name);
        var result = new GenericNetlinkFamily?[1];
        client.Execute(request, $"resolve generic-netlink family \"{name}\"", static (message, result) => result[0] = Decode(message), result);
        return result[0] ?? throw new NetlinkDecodeException($"the controller acknowledged the lookup of \"{name}\" without describing the family");
    }

    /// <summary>Writes a CTRL_CMD_GETFAMILY request for <paramref name="name"/> (flags, sequence and port id are the client's).</summary>
    public static void WriteGetFamily(NetlinkBuffer buffer, string name)
    {
        if (name.Length is 0 or > GenericNetlinkController.MaxNameLength || !name.All(char.IsAscii))
            throw new ArgumentException($"\"{name}\" is not a generic-netlink family name (1-{GenericNetlinkController.MaxNameLength} ASCII characters)", nameof(name));
        var writer = new NetlinkWriter(buffer);
        var message = writer.BeginMessage(GenericNetlinkController.FamilyId, NetlinkFlags.Request);
        writer.WriteGenericHeader(GenericNetlinkController.CommandGetFamily, GenericNetlinkController.Version);
        writer.WriteString(GenericNetlinkController.AttributeFamilyName, name);
        writer.EndMessage(message);
    }

    /// <summary>Decodes the controller's CTRL_CMD_NEWFAMILY reply.</summary>
    public static GenericNetlinkFamily Decode(NetlinkMessage message)
    {
        if (message.Type != GenericNetlinkController.FamilyId)
            ThrowHelper.Decode($"expected a controller message (type {GenericNetlinkController.FamilyId}), got type {message.Type}");
        string? name = null;
        ushort? id = null;
        uint version = 0, headerSize = 0, maxAttribute = 0;
        foreach (var attribute in message.ReadGeneric().Attributes)
        {
            switch (attribute.Type)
            {
                case GenericNetlinkController.AttributeFamilyId: id = attribute.GetUInt16(); break;
                case GenericNetlinkController.AttributeFamilyName: name = attribute.GetString(); break;
                case GenericNetlinkController.AttributeVersion: version = attribute.GetUInt32(); break;
                case GenericNetlinkController.AttributeHeaderSize: headerSize = attribute.GetUInt32(); break;
                case GenericNetlinkController.AttributeMaxAttribute: maxAttribute = attribute.GetUInt32(); break;
            }
        }
        if (id is null || name is null) ThrowHelper.Decode("the controller's family description lacks CTRL_ATTR_FAMILY_ID or CTRL_ATTR_FAMILY_NAME");
        return new GenericNetlinkFamily(name, id.Value, version, headerSize, maxAttribute);
    }
}
